"""report.py: the HARDENING.md table from a results file (no root, no containers)."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(HERE, "report.py")

RESULTS = {
    "meta": {"written": "2026-01-01T00:00:00Z", "kernel": "6.1-test", "runc": "runc version 1.1.5",
             "agentshim": "agentshim version 0.1.0",
             "kernel_config": {"CONFIG_MODULES": "n", "CONFIG_IA32_EMULATION": "y"}},
    "attacks": {
        "raw_socket": {"title": "raw IPv4 socket",
                       "runc": {"verdict": "ESCAPED", "detail": "opened a raw IPv4 socket"},
                       "agentshim": {"verdict": "BLOCKED", "detail": "socket: EPERM"}},
        "rootfs_write": {"title": "write | the root",
                         "runc": {"verdict": "ESCAPED", "detail": "wrote /x"},
                         "agentshim": {"verdict": "ESCAPED", "detail": "wrote /x"}},
        "finit_module": {"title": "finit_module on an empty memfd",
                         "runc": {"verdict": "BLOCKED", "detail": "ENOSYS"},
                         "agentshim": {"verdict": "BLOCKED", "detail": "ENOSYS"}},
        "kill_supervisor": {"title": "kill everything", "runc": {"verdict": "BLOCKED", "detail": "own only"}},
    },
}


def report(tmp_path, *extra, doc_text=None):
    res = tmp_path / "results.json"
    res.write_text(json.dumps(RESULTS))
    doc = tmp_path / "HARDENING.md"
    if doc_text is not None:
        doc.write_text(doc_text)
    r = subprocess.run([sys.executable, REPORT, "--results", str(res), "--doc", str(doc), *extra],
                       capture_output=True, text=True)
    return r, doc


DOC = "# H\n\nbefore\n<!-- escape-results:begin -->\nold table\n<!-- escape-results:end -->\nafter\n"


def test_table_between_markers(tmp_path):
    r, doc = report(tmp_path, doc_text=DOC)
    assert r.returncode == 0, r.stderr
    text = doc.read_text()
    assert text.startswith("# H\n\nbefore\n<!-- escape-results:begin -->\n")
    assert text.endswith("<!-- escape-results:end -->\nafter\n")
    assert "old table" not in text
    assert "| # | attack | runc (Docker-like defaults) | agentshim (default policy) |" in text
    rows = [l for l in text.splitlines() if l.startswith("| ") and "`" in l]
    assert len(rows) == 4
    # The table order follows test_escape.py: rootfs_write comes before raw_socket.
    assert rows[0].startswith("| 1 | `rootfs_write`")
    # Pipes in titles are escaped so the row keeps its columns.
    assert "write \\| the root" in rows[0]
    raw = next(l for l in rows if "`raw_socket`" in l)
    assert "**ESCAPED**: opened a raw IPv4 socket" in raw and "blocked: socket: EPERM" in raw
    # The kernel lacks modules: the row says so and points at the capability row.
    fin = next(l for l in rows if "`finit_module`" in l)
    assert "CONFIG_MODULES is off" in fin and "cap_sys_module" in fin
    assert "not run" in next(l for l in rows if "`kill_supervisor`" in l)
    assert "allows that agentshim stops (1):** `raw_socket`" in text
    assert "still lets through (1):**" in text
    assert "- `rootfs_write`: wrote /x (needs: a read-only root filesystem)" in text
    assert "Not run under agentshim in the recorded results: `kill_supervisor`" in text


def test_check_mode_and_idempotence(tmp_path):
    r, doc = report(tmp_path, "--check", doc_text=DOC)
    assert r.returncode == 1 and "not up to date" in r.stderr
    r, doc = report(tmp_path)
    assert r.returncode == 0
    first = doc.read_text()
    r, doc = report(tmp_path, "--check")
    assert r.returncode == 0, r.stderr
    r, doc = report(tmp_path)
    assert doc.read_text() == first


def test_missing_markers_is_an_error(tmp_path):
    r, doc = report(tmp_path, doc_text="# no markers here\n")
    assert r.returncode == 2 and "lacks the markers" in r.stderr
    assert doc.read_text() == "# no markers here\n"
