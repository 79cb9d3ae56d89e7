"""One gate: every public read of the Store and every CLI read command is authorised and audited.

The tests enumerate the Store's public methods and the CLI's commands: a new one fails here until it is
classified (and, if it reads, until a principal without a role is refused and audited by it).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from granary.config import Settings
from granary.errors import AuthorizationError
from granary.secure.errors import PurposeError
from granary.secure.hooks import SecureHooks
from granary.secure.policy import Policy
from granary.store import Store

SRC = Path(__file__).resolve().parents[3] / "src" / "granary"


def _docs(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(start, start + n)],
                     "text": [f"restricted text {i}" for i in range(start, start + n)]})


class World:
    """An admin store with two datasets, and a principal (mallory) who holds no role.

    Built once per module in a template home and copied per test (building it is the slow part).
    """

    def __init__(self, tmp: Path, template: Path | None = None) -> None:
        self.tmp = tmp
        home = tmp / "home"
        if template is not None:
            shutil.copytree(template / "home", home)
        self.settings = Settings.from_env(environ={}, home=home, gc_grace_s=0.0)
        self.hooks = SecureHooks.from_settings(self.settings, environ={})
        self.admin = Store(self.settings, hooks=self.hooks, catalog=self.hooks.guard.catalog)
        if template is None:
            self.admin.create_dataset("web")
            self.admin.commit_table("web", _docs(20), message="v1")
            self.admin.commit_table("web", _docs(5, start=20), message="v2")
            self.admin.create_dataset("toks", kind="tokens")
            with self.admin.transaction("toks") as txn:
                txn.write_tokens([np.arange(100, dtype=np.uint32)], dtype="uint16")
                txn.commit(message="toks")
            self.hooks.guard.add_principal("mallory")
        self.v1 = self.admin.log("web")[-1]
        self.entry = self.admin._manifest("web").shards[0]
        self.mallory = self.admin.bind(principal="mallory")

    def denied(self, principal: str = "mallory") -> int:
        return len(self.hooks.guard.audit.query(principal=principal, outcome="denied", limit=None))

    def ok(self, principal: str = "mallory") -> list[Any]:
        return self.hooks.guard.audit.query(principal=principal, outcome="ok", limit=None)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate-template")
    world = World(root)
    world.hooks.guard.catalog.dispose()
    return root


@pytest.fixture
def world(tmp_path: Path, template: Path) -> World:
    return World(tmp_path, template)


def _drain(it: Any) -> Any:
    return list(it)


# Every public read of the Store: how to call it on the dataset `web`.
STORE_READS: dict[str, Callable[[Store, World], Any]] = {
    "dataset": lambda s, w: s.dataset("web"),
    "resolve": lambda s, w: s.resolve("web"),
    "refs": lambda s, w: s.refs("web"),
    "log": lambda s, w: s.log("web"),
    "history": lambda s, w: s.history("web"),
    "manifest": lambda s, w: s.manifest("web"),
    "load_manifest": lambda s, w: s.load_manifest(w.v1.manifest_key),
    "open_version": lambda s, w: s.open_version("web"),
    "read_table": lambda s, w: s.read_table("web"),
    "iter_batches": lambda s, w: _drain(s.iter_batches("web")),
    "read_side_table": lambda s, w: s.read_side_table("web", "quarantine"),
    "read_shard": lambda s, w: s.read_shard(w.entry),
    "open_object": lambda s, w: s.open_object(w.entry).close(),
    "object_bytes": lambda s, w: s.object_bytes(w.entry),
    "local_path": lambda s, w: s.local_path(w.entry),
    "diff": lambda s, w: s.diff(f"web@{w.v1.id}", "web"),
    "export": lambda s, w: s.export("web", w.tmp / "out.jsonl"),
    "verify": lambda s, w: s.verify("web"),
}
# Reads that list several datasets: a principal sees only what it may list (and the listing is audited).
STORE_FILTERED: dict[str, Callable[[Store, World], list[Any]]] = {
    "datasets": lambda s, w: [d.name for d in s.datasets()],
    "versions": lambda s, w: [v.dataset for v in s.versions()],
}
STORE_WRITES = {"create_dataset", "branch", "tag", "delete_ref", "retire", "rollback", "transaction", "commit_table",
                "write_shard", "write_token_shard", "write_blob", "gc"}
STORE_OTHER = {"bind"}  # returns a view; every read through it passes the view's gate


def test_every_public_store_method_is_classified() -> None:
    public = {n for n, v in vars(Store).items() if not n.startswith("_") and callable(v)}
    classified = set(STORE_READS) | set(STORE_FILTERED) | STORE_WRITES | STORE_OTHER
    assert public - classified == set(), "classify the new Store method: a read must pass the gate"
    assert classified - public == set()


@pytest.mark.parametrize("name", sorted(STORE_READS))
def test_store_read_refused_and_audited_without_a_role(world: World, name: str) -> None:
    before = world.denied()
    with pytest.raises(AuthorizationError):
        STORE_READS[name](world.mallory, world)
    assert world.denied() == before + 1, f"{name}: the refusal was not audited"


@pytest.mark.parametrize("name", sorted(STORE_FILTERED))
def test_store_listings_hide_what_the_principal_may_not_see(world: World, name: str) -> None:
    assert STORE_FILTERED[name](world.mallory, world) == []
    assert [r.action for r in world.ok()] == ["list"]  # the listing itself is audited
    world.hooks.guard.grant("mallory", "reader", dataset="web")
    assert set(STORE_FILTERED[name](world.admin.bind(principal="mallory"), world)) == {"web"}


@pytest.mark.parametrize("name", sorted(STORE_READS))
def test_store_read_with_a_role_is_allowed_and_audited(world: World, name: str) -> None:
    world.hooks.guard.grant("mallory", "reader", dataset="web")
    reader = world.admin.bind(principal="mallory")
    STORE_READS[name](reader, world)
    records = [r for r in world.ok() if r.dataset == "web"]
    assert records, f"{name}: an allowed read left no audit record"


@pytest.mark.parametrize("name", ["read_table", "iter_batches", "read_shard", "object_bytes", "open_version",
                                  "export", "diff", "local_path"])
def test_data_reads_check_the_declared_purpose(world: World, name: str) -> None:
    world.hooks.guard.set_policy("web", Policy(purposes=frozenset({"research"})))
    with pytest.raises(PurposeError):
        STORE_READS[name](world.admin.bind(purpose="advertising"), world)
    STORE_READS[name](world.admin.bind(purpose="research"), world)


def test_shard_reads_after_an_open_are_decided_once(world: World) -> None:
    world.hooks.guard.grant("mallory", "reader", dataset="web")
    reader = world.admin.bind(principal="mallory")
    manifest = reader.open_version("web")
    calls: list[str] = []
    real = reader.hooks.authorize

    def counting(action: str, dataset: str, **kw: Any) -> None:
        calls.append(action)
        real(action, dataset, **kw)

    reader.hooks.authorize = counting  # type: ignore[method-assign]
    for _ in range(5):
        for entry in manifest.shards:
            reader.read_shard(entry)
            reader.local_path(entry)
    assert calls == []


def test_bind_with_a_bad_token_is_refused_and_audited(world: World) -> None:
    from granary.secure.errors import AuthenticationError

    with pytest.raises(AuthenticationError):
        world.admin.bind(token="gry_0123456789abcdef_" + "x" * 43)
    assert world.denied("anonymous") == 1
    with pytest.raises(AuthenticationError):
        world.admin.bind(principal="nobody")


def test_bind_with_a_token_reads_as_its_principal(world: World) -> None:
    world.hooks.guard.grant("mallory", "reader", dataset="web")
    issued = world.hooks.guard.issue_token("mallory")
    view = world.admin.bind(token=issued.secret, purpose="research")
    assert view.read_table("web").num_rows == 25
    reads = [r for r in world.ok() if r.action == "read"]
    assert reads and reads[0].details.get("purpose") == "research"
    assert world.admin.purpose is None and view.purpose == "research"


# -- the CLI ---------------------------------------------------------------------------------------
# Every command that reads datasets: its arguments (on the dataset `web`); each must refuse mallory and audit it.
CLI_READS: dict[str, list[str]] = {
    "log": ["web"],
    "show": ["web"],
    "diff": ["web", "web"],
    "verify": ["web"],
    "export": ["web", "-o", "{tmp}/out.jsonl"],
    "report": ["web"],
    "peek": ["web"],
    "tokenize": ["web", "-t", "{tmp}/tok.json", "-o", "toks2"],
    "tokenizer train": ["web", "--vocab-size", "300", "-o", "{tmp}/tok.json"],
    "curate": ["web", "-p", "{tmp}/pipe.yaml", "-o", "clean"],
    "stream-bench": ["toks"],
    "policy show": ["web"],
    "policy dp-count": ["web", "--epsilon", "0.5"],
    "key export": ["web", "{tmp}/enc.parquet"],
    "audit verify": [],
    "audit log": [],
    "push": ["web", "{tmp}/remote"],
    "sync": ["web", "{tmp}/remote"],
    "backup create": ["{tmp}/backups"],
    "model register": ["web", "--name", "m"],
    "eval": ["m", "--data", "toks", "--inline"],
    "fed client": ["web", "--site", "a", "--server", "127.0.0.1:9"],
}
CLI_FILTERED = {"ls"}  # lists only what the caller may see (audited)
CLI_WRITES = {"init", "ingest", "delete", "branch", "tag", "rollback", "gc", "forget", "demo", "audit checkpoint",
              "principal add", "principal clear", "principal disable", "token issue", "token revoke",
              "role grant", "role revoke", "role rule", "key rotate", "key shred", "policy set", "policy derive",
              "policy budget", "pull", "remote add", "remote remove", "ingest-stream", "ingest-table", "train",
              "prune-checkpoints",
              # new model versions and alias moves; the model files and data they read pass the gate
              "model alias", "model compress", "model distill", "tune",
              # the coordinator holds no data (it receives model updates); with --publish it commits the global
              # model to its own store through the store's commit; `fed run` also starts `fed client` processes,
              # whose reads pass the gate
              "fed server", "fed run"}
# Commands that read no dataset rows (governance listings are admin-only or the caller's own; schedulers and
# gateways handle jobs and endpoints, whose data reads go through the loader and so through the gate).
CLI_NO_DATA = {"audit public-key", "principal list", "token list", "role list", "submit", "jobs", "job", "cancel",
               "nodes", "drain",
               "sched up", "sched agent", "sched simulate", "gateway up", "gateway check", "gateway status",
               "gateway sim", "gateway endpoint", "gateway backend list", "gateway backend add",
               "gateway backend remove", "gateway backend weight", "gateway backend drain",
               # monitoring reads node and job metrics, not dataset rows
               "agent", "alerts", "metrics", "energy simulate", "watch run", "watch silence", "watch restart",
               "watch evacuate", "watch requests",
               # the HTTP server binds every request to its caller (granary.api.deps), and its reads pass the gate
               "server",
               # stream offsets are positions in a broker, not rows; lineage reads a checkpoint's recorded facts
               # through Store methods (gated as metadata reads)
               "stream-offsets", "lineage",
               # these read and write backup folders, not this store (whoever can read a backup's files can read
               # its data; docs/sync.md says to protect backup destinations like the store itself)
               "remote list", "backup list", "backup verify", "backup restore", "backup prune",
               # recurring jobs are jobs: each run is a command whose reads pass the gate as its own principal
               "schedule add", "schedule list", "schedule pause", "schedule resume", "schedule remove",
               "backup schedule",
               # the registry's own rows and manifests (metadata); model servers are jobs whose reads pass the gate
               "model list", "model show", "model card", "model compare", "deploy", "undeploy",
               # keys makes a CKKS context
               "fed keys"}


def _commands() -> set[str]:
    from granary.cli.main import app

    out: set[str] = set()

    def walk(a: Any, prefix: str) -> None:
        for c in a.registered_commands:
            out.add(prefix + (c.name or c.callback.__name__))
        for g in a.registered_groups:
            walk(g.typer_instance, prefix + g.name + " ")

    walk(app, "")
    return out


def test_every_cli_command_is_classified() -> None:
    classified = set(CLI_READS) | CLI_FILTERED | CLI_WRITES | CLI_NO_DATA
    assert _commands() - classified == set(), "classify the new command: a reader must pass the gate"


def test_every_cli_data_read_takes_a_purpose() -> None:
    from granary.cli.main import app

    found: dict[str, Any] = {}

    def walk(a: Any, prefix: str) -> None:
        for c in a.registered_commands:
            found[prefix + (c.name or c.callback.__name__)] = c.callback
        for g in a.registered_groups:
            walk(g.typer_instance, prefix + g.name + " ")

    walk(app, "")
    # read no dataset rows, or copy the whole store for an administrator (a backup is for no purpose)
    governance = {"audit verify", "audit log", "policy show", "backup create"}
    for name in sorted((set(CLI_READS) | CLI_FILTERED) - governance):
        callback = getattr(found[name], "__wrapped__", found[name])
        assert "purpose" in callback.__code__.co_varnames, f"`granary {name}` has no --purpose"


@pytest.fixture
def tokens_env(world: World, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    issued = world.hooks.guard.issue_token("mallory", scopes=("read", "write", "admin"))
    (world.tmp / "pipe.yaml").write_text("name: p\nsteps:\n  - step: exact_dedup\n")
    (world.tmp / "tok.json").write_text("{}")
    for var in ("GRANARY_PURPOSE", "GRANARY_SECURE", "GRANARY_ENCRYPT", "GRANARY_KEYRING", "GRANARY_CATALOG_URL",
                "GRANARY_STORAGE_URL"):
        monkeypatch.delenv(var, raising=False)
    env = {"GRANARY_HOME": str(world.settings.home), "GRANARY_AUTH": "tokens", "GRANARY_TOKEN": issued.secret}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.mark.parametrize("command", sorted(CLI_READS))
def test_cli_read_refused_and_audited_without_a_role(world: World, tokens_env: dict[str, str],
                                                     command: str) -> None:
    from granary.cli.main import app

    args = [*command.split(), *(a.format(tmp=world.tmp) for a in CLI_READS[command])]
    before = world.denied()
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0, result.output
    assert "restricted text" not in result.output
    assert world.denied() > before, f"{command}: refused but not audited ({result.output})"


def test_cli_ls_shows_only_what_the_caller_may_see(world: World, tokens_env: dict[str, str]) -> None:
    from granary.cli.main import app

    result = CliRunner().invoke(app, ["ls", "--json"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "[]"
    assert any(r.action == "list" for r in world.ok())
    world.hooks.guard.grant("mallory", "reader", dataset="web")
    result = CliRunner().invoke(app, ["ls", "--json"])
    assert '"web"' in result.output and '"toks"' not in result.output


def test_cli_read_commands_without_a_token_are_refused(world: World, tokens_env: dict[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.cli.main import app

    monkeypatch.delenv("GRANARY_TOKEN")
    for args in (["ls"], ["log", "web"], ["show", "web"], ["policy", "show", "web"]):
        before = world.denied("anonymous")
        result = CliRunner().invoke(app, args)
        assert result.exit_code != 0, (args, result.output)
        assert world.denied("anonymous") == before + 1, args


# -- nothing opens shards behind the store's back ----------------------------------------------------
BACKDOOR = re.compile(r"\.objects\.(open|get_bytes|local_path)\(|\bopen_plain\(|\biter_shard_batches\(|"
                      r"from granary\.store\.shard import|\._read_shard\(|\._manifest\(|\._load_manifest\(")
ALLOWED = {"secure/forget.py", "secure/retention.py"}  # governance under its own (admin) decision


def test_no_reader_opens_shards_behind_the_stores_back() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("store/") or rel in ALLOWED:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if BACKDOOR.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


def test_loader_and_curation_readers_go_through_the_gate(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from granary.curate.readers.source import ReaderConfig, plan_units, read_unit
    from granary.stream import StreamingDataset

    seen: list[str] = []
    real = Store.read_shard

    def spy(self: Store, entry: Any, **kw: Any) -> pa.Table:
        seen.append(entry.key)
        return real(self, entry, **kw)

    monkeypatch.setattr(Store, "read_shard", spy)
    with pytest.raises(AuthorizationError):
        StreamingDataset("web", batch_size=4, store=world.mallory, output="numpy", num_threads=0, rank=0,
                         world_size=1)
    with pytest.raises(AuthorizationError):
        plan_units(ReaderConfig(type="version", ref="web"), world.mallory)
    units, _ = plan_units(ReaderConfig(type="version", ref="web"), world.admin)

    class Sink:
        def bad(self, *a: Any, **k: Any) -> None:
            raise AssertionError(a)

    rows = sum(t.num_rows for u in units for t in read_unit(u, store=world.admin, sink=Sink(), batch_rows=64))
    assert rows == 25 and len(seen) == len(units)


def test_binding_a_principal_on_a_plain_store_turns_the_gate_on(world: World) -> None:
    from granary.store.hooks import NullHooks

    plain = Store(world.settings, hooks=NullHooks())
    assert plain.read_table("web").num_rows == 25  # the single-user store: nothing to enforce
    with pytest.raises(AuthorizationError):
        plain.bind(principal="mallory").read_table("web")
    assert world.denied() == 1
