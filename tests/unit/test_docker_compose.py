"""The top-level docker-compose.yml runs Jaeger v2 with its UI and OTLP ports published.

No docker engine runs here, so the file is checked by parsing it; when the `docker-compose`
program is installed its own validator (`docker-compose config -q`, needs no engine) runs too.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def published(ports):
    """Container ports published on the same host port, from the short "HOST:CONTAINER" form."""
    result = set()
    for entry in ports:
        text = str(entry).split("/")[0]
        host, _, container = text.rpartition(":")
        assert host.split(":")[-1] == container, f"{entry}: host and container ports differ"
        result.add(int(container))
    return result


def test_jaeger_v2_service_with_ui_and_otlp_ports():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    jaeger = [s for s in services.values() if str(s.get("image", "")).startswith("jaegertracing/")]
    assert len(jaeger) == 1, services
    image = jaeger[0]["image"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+(\.\d+)?", image), image
    assert {16686, 4317, 4318} <= published(jaeger[0]["ports"])


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose (apt package) not installed; parsed check above ran")
def test_docker_compose_validates_the_file():
    done = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
