"""End-to-end tests of the gate through real gateways (deploy/gateways/)."""
