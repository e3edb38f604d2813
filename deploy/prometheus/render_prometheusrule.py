"""Write deploy/kubernetes/prometheusrule.yaml: the groups of alerts.yml wrapped in a
prometheus-operator PrometheusRule, comments and layout kept.

    python deploy/prometheus/render_prometheusrule.py

Run it after every change to alerts.yml; tests/e2e/test_deploy.py fails while the two
differ. Standard library only.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
TARGET = HERE.parent / "kubernetes" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/prometheus/render_prometheusrule.py:
# edit alerts.yml, then re-run the script (a test fails while the two differ).
#
# The same alert rules for prometheus-operator (kube-prometheus-stack). Its Prometheus
# loads only PrometheusRules matching its ruleSelector: add the label it expects (for
# kube-prometheus-stack, `release: <helm release name>`) under metadata.labels.
# Runbooks: the `runbook` annotation of each alert, and docs/operations.md ("Alerts").
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: process-status
  labels:
    app.kubernetes.io/name: process-status
    app.kubernetes.io/component: metrics
spec:
"""


def render() -> str:
    lines = ALERTS.read_text().splitlines()
    start = lines.index("groups:")
    body = ["  " + line if line else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
