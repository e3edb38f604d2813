"""What writers sent and what the service acknowledged, to judge a recovered state."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Ledger:
    sent: dict[str, int] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    next_value: int = 1
    acks: int = 0
    unexpected: list[str] = field(default_factory=list)

    def take(self, entity: str) -> int:
        """The next (ever increasing) value to send for `entity`."""
        value = self.next_value
        self.next_value += 1
        self.sent[entity] = max(self.sent.get(entity, 0), value)
        return value

    def ack(self, entity: str, value: int) -> None:
        self.acked[entity] = max(self.acked.get(entity, 0), value)
        self.acks += 1

    def never_above_sent(self, found: dict[str, int]) -> list[str]:
        return [f"{entity}={value} but at most {self.sent.get(entity)} was sent"
                for entity, value in found.items() if value > self.sent.get(entity, 0)]

    def lost(self, found: dict[str, int]) -> list[str]:
        return [f"{entity}: acknowledged {value}, recovered {found.get(entity)}"
                for entity, value in self.acked.items() if found.get(entity, 0) < value]
