"""agent.system.lazyimport: a deferred module stays unimported through ``import`` and loads on first
use. Each case runs in a fresh interpreter (what is imported is process state)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run(code: str) -> None:
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_transport_leaves_http_and_email_unimported() -> None:
    run("""
        import sys
        import agent.mqtt.transport
        heavy = [m for m in sys.modules if m.split(".")[0] in ("http", "email")]
        assert heavy == [], heavy
        assert type(sys.modules["urllib.request"]).__name__ == "_Deferred"
    """)


def test_a_deferred_module_loads_on_first_use_and_then_is_the_real_one() -> None:
    run("""
        import sys
        from agent.system.lazyimport import defer
        assert defer("urllib.request")
        import urllib.request  # the import statement alone loads nothing
        assert "http.client" not in sys.modules
        stub = urllib.request
        assert isinstance(urllib.request.getproxies(), dict)  # first use: the real module
        assert "http.client" in sys.modules
        real = sys.modules["urllib.request"]
        assert real is not stub and urllib.request is real
        assert type(real).__name__ == "module"
        from urllib.request import Request
        assert Request is real.Request
        assert stub.Request is real.Request  # an old reference still works
        assert not defer("urllib.request")  # imported now: nothing to defer
    """)


def test_from_import_of_a_deferred_module_loads_it() -> None:
    run("""
        import sys
        from agent.system.lazyimport import defer
        assert defer("urllib.request")
        from urllib.request import urlopen
        assert callable(urlopen) and "http.client" in sys.modules
    """)


@pytest.mark.parametrize("name", ["email", "no_such_module_here", "json"])
def test_packages_missing_and_imported_modules_are_left_alone(name: str) -> None:
    run(f"""
        import sys, json
        from agent.system.lazyimport import defer
        before = sys.modules.get({name!r})
        assert not defer({name!r})
        assert sys.modules.get({name!r}) is before
    """)


def test_concurrent_first_uses_all_get_the_real_module() -> None:
    run("""
        import sys, threading
        from agent.system.lazyimport import defer
        assert defer("urllib.request")
        import urllib.request
        stub, got, go = urllib.request, [], threading.Barrier(8)
        def use():
            go.wait()
            got.append(stub.getproxies)
        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        real = sys.modules["urllib.request"]
        assert len(got) == 8 and all(f is real.getproxies for f in got)
    """)
