"""The process diagram in docs/architecture.md agrees with the code: its
``[name]`` boxes are exactly the programs supervisord runs (the session config
that ``lanetrace run`` generates, plus the daemon's config/supervisord.conf and
the Procfile when they exist), and every service module those programs run
(``python -m lanetrace.<module>``, a module or a package with ``__main__``) is named in it."""
import configparser
import os
import re

from docs_harness import DOCS, REPO, parse_blocks

from lanetrace.core.rundir import RunDir
from lanetrace.supervise.session import SessionConfig, render_config

SERVICES = os.path.join(REPO, "services", "lanetrace")
MARKER = "architecture-diagram"


def diagram() -> str:
    path = os.path.join(DOCS, "architecture.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # The block right after the marker comment (which may span several lines).
    start = text.index(f"<!-- {MARKER}")
    fence = text.index("```", text.index("-->", start))
    end = text.index("```", text.index("\n", fence))
    return text[text.index("\n", fence) + 1:end]


def boxes(text: str) -> set[str]:
    return set(re.findall(r"\[([a-z][a-z0-9_-]*)\]", text))


def supervisord_programs(conf_text: str) -> dict[str, str]:
    """program or event listener name -> its command line."""
    cp = configparser.RawConfigParser(strict=False)
    cp.read_string(conf_text)
    out = {}
    for section in cp.sections():
        kind, _, name = section.partition(":")
        if kind in ("program", "eventlistener") and name:
            out[name] = cp.get(section, "command", fallback="")
    return out


def session_config_text(tmp_path) -> str:
    rd = RunDir(str(tmp_path / "run")).create()
    cfg = SessionConfig(run_dir=rd, session_id="20261121-000000-abcd",
                        trace_root=str(tmp_path / "traces"), drainers=2,
                        spec_path=str(tmp_path / "spec.json"))
    return render_config(cfg)


def configs(tmp_path) -> list[dict[str, str]]:
    """The programs of each supervisord config: the session's, the daemon's."""
    out = [supervisord_programs(session_config_text(tmp_path))]
    daemon_conf = os.path.join(REPO, "config", "supervisord.conf")
    if os.path.exists(daemon_conf):
        with open(daemon_conf) as f:
            out.append(supervisord_programs(f.read()))
    return out


def all_programs(tmp_path) -> set[str]:
    return {name for conf in configs(tmp_path) for name in conf}


def all_commands(tmp_path) -> list[str]:
    return ([cmd for conf in configs(tmp_path) for cmd in conf.values()]
            + list(procfile_processes().values()))


def procfile_processes() -> dict[str, str]:
    path = os.path.join(REPO, "Procfile")
    if not os.path.exists(path):
        return {}
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line.strip())
            if m:
                # honcho has no numprocs: drainer0, drainer1 are the program drainer
                out[re.sub(r"-?\d+$", "", m[1])] = m[2]
    return out


def modules_run(commands) -> set[str]:
    mods = set()
    for cmd in commands:
        mods.update(re.findall(r"-m\s+lanetrace\.([a-z_.]*[a-z_])", cmd))
    return mods


def test_architecture_diagram__session_config_programs__then_each_has_a_box(tmp_path):
    programs = supervisord_programs(session_config_text(tmp_path))
    assert set(programs) - boxes(diagram()) == set(), (
        "docs/architecture.md: programs of the session config with no [box] in the diagram")


def test_architecture_diagram__boxes__then_each_is_a_supervisord_program(tmp_path):
    names = all_programs(tmp_path) | set(procfile_processes())
    assert boxes(diagram()) - names == set(), (
        "docs/architecture.md: [boxes] that no supervisord config or Procfile runs")


def test_architecture_diagram__daemon_config_and_procfile__then_each_process_has_a_box(tmp_path):
    missing = (all_programs(tmp_path) | set(procfile_processes())) - boxes(diagram())
    assert missing == set(), "docs/architecture.md: processes with no [box] in the diagram"


def test_architecture_diagram__modules_supervisord_runs__then_each_is_named(tmp_path):
    commands = all_commands(tmp_path)
    text = diagram()
    missing = {m for m in modules_run(commands) if f"lanetrace.{m}" not in text}
    assert missing == set(), "docs/architecture.md: service modules not named in the diagram"


def test_architecture_diagram__named_modules__then_each_exists_and_is_run(tmp_path):
    commands = all_commands(tmp_path)
    named = set(re.findall(r"lanetrace\.([a-z_.]*[a-z_])", diagram()))
    for mod in named:
        path = os.path.join(SERVICES, *mod.split("."))
        assert os.path.exists(path + ".py") or os.path.exists(os.path.join(path, "__main__.py")), \
            f"lanetrace.{mod} does not exist"
    assert named - modules_run(commands) == set(), (
        "docs/architecture.md names modules that supervisord does not run")
