"""`calibkit monitor --serve HOST:PORT`: the Prometheus /metrics endpoint, scraped on 127.0.0.1.

Each monitor runs in a subprocess (a hang or crash fails the test, never the run)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from calibkit.monitor import parse_address, prometheus_text

CMD = [sys.executable, "-m", "calibkit.cli", "monitor"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _samples(text):
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _start(*args):
    proc = subprocess.Popen(CMD + ["--serve", "127.0.0.1:0", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    first = proc.stderr.readline().decode()
    assert first.startswith("calibkit monitor: serving http://127.0.0.1:"), first
    url = first.split()[-1]
    assert url.endswith("/metrics")
    return proc, url


def _scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def _wait_lines(url, n):
    deadline = time.monotonic() + 30
    while True:
        text = _scrape(url)
        if _samples(text).get(("calibkit_lines_total", ())) == n:
            return text
        assert time.monotonic() < deadline, text
        time.sleep(0.05)


def _port_free(url):
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _bad_scrapes(url):
    host, port = url.split("//")[1].split("/")[0].split(":")
    for payload in (b"\x00\xff garbage\r\n\r\n", b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b""):
        with socket.create_connection((host, int(port)), timeout=5) as s:  # closed before or during the reply
            s.sendall(payload)
    req = urllib.request.Request(url, method="DELETE")
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except OSError:
        pass


def test_serve_scrape_same_metrics_as_text_file(tmp_path):
    pytest.importorskip("prometheus_client")
    prom = tmp_path / "calibkit.prom"
    proc, url = _start("--every", "1", "--prometheus", str(prom))
    try:
        empty = _samples(_scrape(url))  # before any input: counters, no metrics
        assert empty[("calibkit_lines_total", ())] == 0
        assert ("calibkit_ece", ()) not in empty
        records = [{"probs": [0.2, 0.8], "label": 1}, {"probs": [0.6, 0.4], "label": 1}, "not json"]
        proc.stdin.write("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in records).encode())
        proc.stdin.flush()
        text = _wait_lines(url, 3)
        got = _samples(text)
        assert got[("calibkit_count", ())] == 2
        assert got[("calibkit_rejected_total", (("reason", "not_json"),))] == 1
        assert "# TYPE calibkit_lines_total counter" in text and "# TYPE calibkit_ece gauge" in text
        _bad_scrapes(url)  # the monitor carries on
        proc.stdin.write(b'{"probs": [0.9, 0.1], "label": 0}\n')
        proc.stdin.flush()
        got = _samples(_wait_lines(url, 4))
        assert got == _samples(prom.read_text())  # the endpoint and the text file say the same
        assert got[("calibkit_count", ())] == 3
    finally:
        out, err = proc.communicate(timeout=60)  # end of input: final report, server closed
    assert proc.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1])["lines"] == 4
    assert "Traceback" not in err.decode()
    assert _port_free(url)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal(tmp_path, sig):
    pytest.importorskip("prometheus_client")
    proc, url = _start("--every", "1", "--state", str(tmp_path / "m.state"))
    try:
        proc.stdin.write(b'{"confidence": 0.7, "correct": 1}\n')  # stdin stays open: only the signal stops it
        proc.stdin.flush()
        _wait_lines(url, 1)  # consumed (a signal stops the monitor before the lines it has not read yet)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1])["count"] == 1
    assert _port_free(url)


def test_serve_without_prometheus_client_names_the_extra():
    code = ("import sys; sys.modules['prometheus_client'] = None; from calibkit.cli import main; "
            "raise SystemExit(main(['monitor', '--serve', '127.0.0.1:0']))")
    r = subprocess.run([sys.executable, "-c", code], input=b"", capture_output=True, timeout=60)
    assert r.returncode == 2
    assert "calibkit[prometheus]" in r.stderr.decode() and "Traceback" not in r.stderr.decode()


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "127.0.0.1:99999", ":9100", "host:port"])
def test_serve_bad_address(address):
    r = subprocess.run(CMD + ["--serve", address], input=b"", capture_output=True, timeout=60)
    assert r.returncode == 2
    assert "--serve must be HOST:PORT" in r.stderr.decode()


def test_serve_port_in_use():
    pytest.importorskip("prometheus_client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(CMD + ["--serve", f"127.0.0.1:{port}"], input=b"", capture_output=True, timeout=60)
    assert r.returncode == 2
    assert f"--serve 127.0.0.1:{port}: cannot listen" in r.stderr.decode()


def test_parse_address():
    assert parse_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_address("[::1]:8000") == ("::1", 8000)
    assert parse_address("localhost:0") == ("localhost", 0)
    with pytest.raises(ValueError, match="--serve must be HOST:PORT"):
        parse_address("localhost:-1")


def test_prometheus_text_unchanged_format():
    text = prometheus_text({"lines": 5, "rejected": 0, "rejected_by_reason": {}, "count": 4, "weight": 4.0,
                            "ece": 0.125, "ece_ci": [0.1, 0.2]})
    assert "calibkit_ece 0.125\n" in text
    assert 'calibkit_ece_ci{bound="lower"} 0.1\n' in text
    assert "# TYPE calibkit_rejected_total counter\n" in text
    assert "calibkit_lines_total 5\n" in text
