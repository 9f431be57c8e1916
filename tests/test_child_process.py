"""The one child-process launcher (compresslab.child_process): output on success; on failure,
timeout or a signal, one error naming what failed, how, and the child's last lines."""

import textwrap
import time

import pytest

from compresslab.child_process import ChildProcessFailed, run_module
from compresslab.trackers.memory_probe import last_line_json, probe_in_child


def child_module(tmp_path, name: str, code: str) -> str:
    """A module ``python -m name`` finds when run with cwd=tmp_path."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
    return name


def gone(pid: int, within_s: float = 5.0) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for its reaper counts as gone)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_success_returns_the_childs_stdout(tmp_path):
    module = child_module(tmp_path, "hello", """
        import sys
        print("loading", file=sys.stderr)
        print("first line")
        print(" ".join(sys.argv[1:]))
    """)
    assert run_module(module, ["a", "b"], what="hello job", cwd=tmp_path) == "first line\na b\n"


def test_a_failing_child_raises_with_its_last_lines(tmp_path):
    module = child_module(tmp_path, "crash", """
        import sys
        for i in range(30):
            print(f"progress {i}", file=sys.stderr)
        print("ValueError: bad shape", file=sys.stderr)
        sys.exit(3)
    """)
    with pytest.raises(ChildProcessFailed, match=r"^crash job failed \(exit code 3\); its last output:\n"
                                                 r"  progress 19\n(  .*\n)*  ValueError: bad shape$") as failure:
        run_module(module, what="crash job", cwd=tmp_path)
    assert isinstance(failure.value, RuntimeError)
    assert len(failure.value.tail) == 12 and "progress 18" not in failure.value.tail


def test_a_child_silent_on_stderr_reports_its_last_stdout_lines(tmp_path):
    module = child_module(tmp_path, "quiet", "print('partial result'); raise SystemExit(1)")
    with pytest.raises(ChildProcessFailed, match=r"quiet job failed \(exit code 1\); its last output:\n"
                                                 r"  partial result"):
        run_module(module, what="quiet job", cwd=tmp_path)


def test_a_timeout_kills_the_child_and_what_it_started(tmp_path):
    module = child_module(tmp_path, "hang", """
        import subprocess, sys, time
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open("pids", "w").write(f"{__import__('os').getpid()} {helper.pid}")
        print("started", file=sys.stderr, flush=True)
        time.sleep(60)
        print("done")
    """)
    start = time.monotonic()
    with pytest.raises(ChildProcessFailed, match=r"hang job timed out after 2 s and was killed; its last output:\n"
                                                 r"  started"):
        run_module(module, what="hang job", timeout=2, cwd=tmp_path)
    assert time.monotonic() - start < 20
    child, helper = map(int, (tmp_path / "pids").read_text().split())
    assert gone(child) and gone(helper)


def test_a_child_killed_by_a_signal_is_reported(tmp_path):
    module = child_module(tmp_path, "killed", """
        import os, signal, sys
        print("about to die", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    with pytest.raises(ChildProcessFailed, match=r"killed job was killed by signal SIGKILL \(exit code -9\); "
                                                 r"its last output:\n  about to die"):
        run_module(module, what="killed job", cwd=tmp_path)


def test_show_output_passes_the_childs_output_through_as_it_comes(tmp_path, capfd):
    module = child_module(tmp_path, "chatty", """
        import sys
        print("step 1 of 2", flush=True)
        print("warming up", file=sys.stderr, flush=True)
        sys.exit(2)
    """)
    with pytest.raises(ChildProcessFailed, match=r"chatty job failed \(exit code 2\); its last output:\n  warming up$"):
        run_module(module, what="chatty job", cwd=tmp_path, show_output=True)
    shown = capfd.readouterr()
    assert "step 1 of 2" in shown.out and "warming up" in shown.err


def test_a_probe_without_a_json_line_is_a_failure_that_says_so():
    assert last_line_json('warning: slow\n{"peak_rss_bytes": 5}\n', "probe") == {"peak_rss_bytes": 5}
    with pytest.raises(ChildProcessFailed, match="probe printed no JSON on its last line; its last output:\n  done"):
        last_line_json("done\n", "probe")
    with pytest.raises(ChildProcessFailed, match=r"\(no output\)"):
        last_line_json("", "probe")


def test_a_failing_memory_probe_names_the_artifact(tmp_path):
    import torch

    artifact = tmp_path / "no-such-artifact"
    with pytest.raises(ChildProcessFailed, match=rf"memory probe of {artifact} failed \(exit code 1\)"):
        probe_in_child(artifact, tmp_path, "classifier", "cpu", {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, 1)



def test_the_memory_probe_returns_the_childs_json(tmp_path):
    from tiny import tiny_bert_classifier, tokenizer

    tiny_bert_classifier(train_steps=0).save_pretrained(tmp_path)
    tokenizer().save_pretrained(tmp_path)
    inputs = dict(tokenizer()(["a short text"], return_tensors="pt"))
    stats = probe_in_child(tmp_path, tmp_path, "classifier", "cpu", inputs, 1)
    assert isinstance(stats, dict) and stats  # the probe's own fields, parsed from its last stdout line
    assert all(value is None or isinstance(value, (int, float)) for value in stats.values())
