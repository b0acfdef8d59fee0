"""The shipped config/supervisord.conf and Procfile are the renderer's output
and supervisord accepts them."""
import os

from supervisor.options import ServerOptions

from conftest import REPO
from lanetrace.supervise.daemonconf import DEFAULT_DAEMON_DIR
from lanetrace.supervise.supervisorconf import SHIPPED_PYTHON, render_daemon_config, render_procfile


def test_shipped_supervisord_conf__compared_with_the_renderer__then_identical():
    with open(os.path.join(REPO, "config", "supervisord.conf")) as f:
        shipped = f.read()
    assert shipped == render_daemon_config(DEFAULT_DAEMON_DIR, SHIPPED_PYTHON, 2, 1), \
        "config/supervisord.conf is stale: python -m lanetrace.supervise render > config/supervisord.conf"


def test_shipped_supervisord_conf__parsed_by_supervisor__then_every_service_is_defined(tmp_path):
    with open(os.path.join(REPO, "config", "supervisord.conf")) as f:
        text = f.read()
    # Same file, with the run directory made to exist (supervisord checks) and
    # %(here)s pinned to config/, where the shipped file lives.
    (tmp_path / "run" / "logs").mkdir(parents=True)
    text = text.replace(DEFAULT_DAEMON_DIR, str(tmp_path / "run"))
    text = text.replace("%(here)s", os.path.join(REPO, "config"))
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text)
    opts = ServerOptions()
    opts.realize(["-c", str(conf)])
    groups = {g.name: sorted(p.name for p in g.process_configs) for g in opts.process_group_configs}
    assert groups["lanetrace"] == ["broker", "drainer-0", "drainer-1", "injector", "query-0",
                                   "writer"]
    assert "watchdog" in groups
    python = opts.process_group_configs[0].process_configs[0].command.split()[0]
    assert os.path.realpath(python) == os.path.realpath(os.path.join(REPO, ".venv", "bin", "python"))


def test_shipped_procfile__compared_with_the_renderer__then_identical():
    with open(os.path.join(REPO, "Procfile")) as f:
        shipped = f.read()
    assert shipped == render_procfile(DEFAULT_DAEMON_DIR, ".venv/bin/python", 2)
