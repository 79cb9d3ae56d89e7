"""Governance commands: audit, principal, token, role, key, policy and forget (thin over granary.secure)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from granary.cli.output import console, err_console, fail, print_json, table

if TYPE_CHECKING:
    from granary.secure.guard import Guard
    from granary.store import Store

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
audit_app = typer.Typer(help="The tamper-evident audit log: verify, search, signed checkpoints.", no_args_is_help=True)
principal_app = typer.Typer(help="Users and service accounts.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (shown once, stored hashed).", no_args_is_help=True)
role_app = typer.Typer(help="Roles per tenant or dataset, and attribute rules.", no_args_is_help=True)
key_app = typer.Typer(help="Master-key rotation and crypto-shredding.", no_args_is_help=True)
policy_app = typer.Typer(help="Licenses, purposes, retention, encryption and private statistics.",
                         no_args_is_help=True)


def _guard() -> Guard:
    from granary.catalog import open_catalog
    from granary.config import Settings
    from granary.secure.guard import Guard
    from granary.secure.settings import SecureSettings

    settings = Settings.from_env()
    return Guard(open_catalog(settings.catalog_url), SecureSettings.from_env(settings.home))


def _store(guard: Guard) -> Store:
    from granary.config import Settings
    from granary.secure.hooks import SecureHooks
    from granary.store import Store

    return Store(Settings.from_env(), hooks=SecureHooks(guard), catalog=guard.catalog)


def _when(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        fail(f"cannot read the time {text!r}: use ISO 8601 (2026-11-22T13:00) or epoch seconds")


# -- audit ---------------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(
    checkpoints: Annotated[Path | None, typer.Option(
        help="Folder of exported signed checkpoints (default GRANARY_AUDIT_CHECKPOINTS); the checkpoints "
             "stored in the catalog are always checked.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Recompute the hash chain and check every signed checkpoint against the trusted key; exit 1 at the first
    edited, deleted, inserted or reordered record, or a log cut back below a checkpoint."""
    from dataclasses import asdict

    from granary.secure.checkpoint import all_checkpoints, trusted_public_key

    guard = _guard()
    guard.authorize("audit", "*")
    found = all_checkpoints(guard.audit, checkpoints or guard.settings.checkpoint_dir)
    trusted = trusted_public_key(guard.settings, guard.key_provider())
    report = guard.audit.verify(checkpoints=found, trusted_key=trusted)
    if json_out:
        print_json(asdict(report) | {"trusted_key": trusted})
    elif report.ok:
        rate = report.records / report.elapsed_s if report.elapsed_s else 0
        console.print(f"audit chain ok: {report.records} records, {report.checkpoints} checkpoints "
                      f"({rate:,.0f} records/s)")
    if not json_out:
        for warning in report.warnings:
            err_console.print(f"[yellow]warning[/] {warning}", highlight=False)
    if not report.ok:
        fail(f"audit chain broken at record {report.first_bad}: {report.reason}")


@audit_app.command("log")
def audit_log(
    principal: Annotated[str | None, typer.Option(help="Only this principal.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action (read, write, grant, ...).")] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, denied or error.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time (ISO 8601 or epoch seconds).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many records (newest first).")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """Search the audit log."""
    guard = _guard()
    guard.authorize("audit", "*")
    records = guard.audit.query(principal=principal, dataset=dataset, action=action, outcome=outcome,
                                since=_time(since), until=_time(until), limit=limit, newest_first=True)
    if json_out:
        print_json([r.to_dict() for r in records])
        return
    console.print(table("audit log", ["seq", "when", "principal", "action", "object", "outcome", "origin"],
                        [(r.seq, _when(r.at), r.principal, r.action, r.object or r.dataset, r.outcome, r.origin)
                         for r in records]))


@audit_app.command("checkpoint")
def audit_checkpoint(
    export: Annotated[Path | None, typer.Option(help="Also write it, once and read-only, into this folder "
                                                     "(default GRANARY_AUDIT_CHECKPOINTS).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign the current head of the chain (Ed25519) and optionally export it write-once."""
    from dataclasses import asdict

    from granary.secure.checkpoint import all_checkpoints, export_checkpoint, make_checkpoint, trusted_public_key

    guard = _guard()
    guard.authorize("audit", "*")
    export = export or guard.settings.checkpoint_dir
    known = all_checkpoints(guard.audit, export)  # never sign a log cut back below an earlier checkpoint
    trusted = trusted_public_key(guard.settings, guard.key_provider())
    checked = guard.audit.verify(checkpoints=known, trusted_key=trusted)
    if not checked.ok:
        guard.record("audit.checkpoint", "*", obj="audit:head", outcome="error", details={"reason": checked.reason})
        fail(f"not signing: the audit chain is broken at record {checked.first_bad}: {checked.reason}")
    # recorded before signing, so the checkpoint pins its own record (none unpinned right after a checkpoint)
    guard.record("audit.checkpoint", "*", obj="audit:head", details={"export": str(export) if export else None})
    cp = make_checkpoint(guard.audit, guard.key_provider().signing_key(), checkpoints=known, trusted_key=trusted)
    path = export_checkpoint(cp, export) if export else None
    if json_out:
        print_json({**asdict(cp), "path": str(path) if path else None})
        return
    console.print(f"checkpoint at record {cp.seq} ({cp.hash[:16]}...) signed by {cp.public_key[:16]}..."
                  + (f", exported to {path}" if path else ""))


@audit_app.command("public-key")
def audit_public_key() -> None:
    """Print the public key that signs checkpoints, to configure as GRANARY_AUDIT_PUBLIC_KEY where logs are
    verified."""
    from granary.secure.checkpoint import public_hex

    guard = _guard()
    guard.authorize("audit", "*")
    console.print(public_hex(guard.key_provider().signing_key()), highlight=False)


# -- principals and tokens -------------------------------------------------------------------------
@principal_app.command("add")
def principal_add(
    name: str,
    service: Annotated[bool, typer.Option(help="A service account instead of a user.")] = False,
    tenant: Annotated[str | None, typer.Option(help="Tenant (default: yours).")] = None,
    clearance: Annotated[list[str] | None, typer.Option(help="Clearance to hold (repeatable), e.g. pii.")] = None,
) -> None:
    """Create a principal."""
    p = _guard().add_principal(name, kind="service" if service else "user", tenant=tenant,
                               clearances=tuple(clearance or ()))
    console.print(f"principal {p.name} ({p.kind}, tenant {p.tenant}) created")


@principal_app.command("list")
def principal_list(json_out: JsonOpt = False) -> None:
    """List principals (tenant admins only)."""
    guard = _guard()
    guard.authorize("principal", "*")
    rows = guard.registry.principals()
    if json_out:
        print_json(rows)
        return
    console.print(table("principals", ["name", "kind", "tenant", "clearances", "disabled"],
                        [(r["name"], r["kind"], r["tenant"], ",".join(r["clearances"]), r["disabled"])  # type: ignore[arg-type]
                         for r in rows]))


@principal_app.command("clear")
def principal_clear(name: str, clearances: Annotated[list[str], typer.Argument(help="The full new set.")]) -> None:
    """Set a principal's clearances (replaces the old set)."""
    p = _guard().set_clearances(name, tuple(clearances))
    console.print(f"{p.name} now holds {sorted(p.clearances)}")


@principal_app.command("disable")
def principal_disable(name: str, enable: Annotated[bool, typer.Option(help="Re-enable instead.")] = False) -> None:
    """Disable a principal (all its tokens stop working), or re-enable it."""
    _guard().disable_principal(name, not enable)
    console.print(f"{name} {'enabled' if enable else 'disabled'}")


@token_app.command("issue")
def token_issue(
    principal: str,
    scope: Annotated[list[str] | None, typer.Option(help="read, write or admin (repeatable).")] = None,
    ttl_days: Annotated[float, typer.Option(help="Lifetime in days.")] = 30.0,
    json_out: JsonOpt = False,
) -> None:
    """Issue a token; the secret is printed once and never stored."""
    issued = _guard().issue_token(principal, scopes=tuple(scope or ("read",)), ttl_s=ttl_days * 86400.0)
    if json_out:
        print_json({"token_id": issued.token_id, "token": issued.secret, "scopes": issued.scopes,
                    "expires_at": issued.expires_at})
        return
    console.print(f"token {issued.token_id} for {principal} (scopes {list(issued.scopes)}, expires "
                  f"{_when(issued.expires_at)}). Store it now, it is not shown again:")
    console.print(issued.secret, highlight=False, soft_wrap=True)


@token_app.command("list")
def token_list(principal: Annotated[str | None, typer.Argument()] = None, json_out: JsonOpt = False) -> None:
    """List tokens (never their secrets)."""
    guard = _guard()
    guard.authorize("token", "*")
    rows = guard.registry.tokens(principal)
    if json_out:
        print_json(rows)
        return
    console.print(table("tokens", ["id", "principal", "scopes", "created", "expires", "revoked"],
                        [(r["id"], r["principal"], ",".join(r["scopes"]), _when(r["created_at"]),  # type: ignore[arg-type]
                          _when(r["expires_at"]), _when(r["revoked_at"])) for r in rows]))  # type: ignore[arg-type]


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token for good."""
    _guard().revoke_token(token_id)
    console.print(f"token {token_id} revoked")


# -- roles ----------------------------------------------------------------------------------------
@role_app.command("grant")
def role_grant(
    principal: str,
    role: Annotated[str, typer.Argument(help="reader, writer or admin.")],
    dataset: Annotated[str | None, typer.Option(help="On this dataset.")] = None,
    tenant: Annotated[str | None, typer.Option(help="On every dataset of this tenant.")] = None,
) -> None:
    """Give a principal a role on a dataset or a tenant (you must be admin there)."""
    if (dataset is None) == (tenant is None):
        fail("give exactly one of --dataset or --tenant")
    g = _guard().grant(principal, role, dataset=dataset, tenant=tenant)  # type: ignore[arg-type]
    console.print(f"{g.principal} is now {g.role} of {g.scope_kind} {g.scope}")


@role_app.command("revoke")
def role_revoke(principal: str, dataset: Annotated[str | None, typer.Option()] = None,
                tenant: Annotated[str | None, typer.Option()] = None) -> None:
    """Remove a principal's role on a dataset or tenant."""
    if (dataset is None) == (tenant is None):
        fail("give exactly one of --dataset or --tenant")
    _guard().revoke_role(principal, dataset=dataset, tenant=tenant)
    console.print(f"role of {principal} on {dataset or tenant} removed")


@role_app.command("list")
def role_list(principal: Annotated[str | None, typer.Argument()] = None, json_out: JsonOpt = False) -> None:
    """List grants and attribute rules (yours, or everyone's for a tenant admin)."""
    guard = _guard()
    if principal != guard.principal.name:
        guard.authorize("grant", "*")
    grants = [g.__dict__ for g in guard.roles.grants(principal)]
    if json_out:
        print_json({"grants": grants, "rules": guard.roles.rules()})
        return
    console.print(table("grants", ["principal", "scope", "role"],
                        [(g["principal"], f"{g['scope_kind']}:{g['scope']}", g["role"]) for g in grants]))
    console.print(table("attribute rules", ["tag pattern", "clearance"], guard.roles.rules().items()))


@role_app.command("rule")
def role_rule(tag_pattern: str, clearance: str) -> None:
    """Require CLEARANCE for datasets with a tag matching TAG_PATTERN (e.g. 'pii:*' pii)."""
    _guard().add_rule(tag_pattern, clearance)
    console.print(f"datasets tagged {tag_pattern} now need the {clearance} clearance")


# -- keys and forgetting ---------------------------------------------------------------------------
@key_app.command("rotate")
def key_rotate(tenant: Annotated[str | None, typer.Option()] = None,
               retire_old: Annotated[bool, typer.Option(help="Destroy the old master keys afterwards.")] = False,
               json_out: JsonOpt = False) -> None:
    """New master key for a tenant; every data key is re-wrapped (shards are not rewritten)."""
    report = _guard().rotate_keys(tenant, retire_old=retire_old)
    if json_out:
        print_json(report.__dict__)
        return
    console.print(f"tenant {report.tenant}: master key {report.new_key_id}, {report.rewrapped} data keys "
                  f"re-wrapped, retired {list(report.retired)}")


@key_app.command("shred")
def key_shred(ref: Annotated[str, typer.Argument(help="DATASET@VERSION to destroy.")]) -> None:
    """Crypto-shred a version: its exclusive encrypted shards become unreadable everywhere, backups included."""
    from granary.secure.retention import shred_version

    guard = _guard()
    vid, count = shred_version(_store(guard), guard, ref)
    console.print(f"version {vid[:12]} shredded: {count} data keys destroyed")


@key_app.command("export")
def key_export(
    ref: Annotated[str, typer.Argument(help="DATASET[@REF] to export.")],
    path: Annotated[Path, typer.Argument(help="Output Parquet file.")],
    column: Annotated[list[str] | None, typer.Option(help="Column to encrypt (repeatable; default all).")] = None,
    purpose: Annotated[str | None, typer.Option(help="Declared purpose of the export.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Export a version as Parquet with modular (column) encryption under the tenant's master key."""
    from granary.secure.parquet_export import export_encrypted

    guard = _guard()
    info = export_encrypted(_store(guard), guard, ref, path, columns=column, purpose=purpose)
    if json_out:
        print_json(info)
        return
    console.print(f"exported {info['rows']} rows of {ref} to {path}; encrypted columns {info['encrypted_columns']} "
                  f"under master key {info['master_key_id']}")


def forget_cmd(
    dataset: str,
    subject: Annotated[str, typer.Option(help="The subject id (or PII value with --by value).")],
    by: Annotated[str, typer.Option(help="column: exact match on --column; value: substring of --column.")] =
    "column",
    column: Annotated[str | None, typer.Option(help="Default subject_id (by column) or text (by value).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Remove a data subject from every version of a dataset and print the signed receipt."""
    from dataclasses import asdict

    from granary.secure.forget import forget

    if by not in ("column", "value"):
        fail("--by must be 'column' or 'value'")
    guard = _guard()
    receipt = forget(_store(guard), guard, dataset, subject, by=by, column=column)  # type: ignore[arg-type]
    if json_out:
        print_json(asdict(receipt))
        return
    console.print(table(f"forget {receipt.id}", ["field", "value"], [
        ("subject (HMAC)", receipt.subject_digest[:16] + "..."), ("rows removed", receipt.rows_removed),
        ("versions expired", len(receipt.affected_versions)),
        ("new heads", ", ".join(f"{b}@{v[:12]}" for b, v in receipt.new_versions.items())),
        ("keys shredded", receipt.shredded_keys), ("deleted after gc grace", len(receipt.pending_deletion)),
        ("readers of expired versions", len(receipt.readers)),
        ("tags on expired versions", ", ".join(receipt.tags) or "none"),
        ("derived datasets", "; ".join(f"{name}: {_derived_outcome(info)}"
                                       for name, info in receipt.derived_changed.items()) or "none"),
        ("signed by", receipt.public_key[:16] + "...")]))


def _derived_outcome(info: dict[str, Any]) -> str:
    if info.get("changed"):
        return f"{info['rows_removed']} row(s) removed, {info['versions_expired']} version(s) expired"
    return str(info.get("reason") or "the subject was not found")


# -- policies and private statistics ---------------------------------------------------------------
@policy_app.command("show")
def policy_show(dataset: str, json_out: JsonOpt = False) -> None:
    """Show a dataset's policy (needs a role on it; audited)."""
    guard = _guard()
    guard.authorize("list", dataset, obj=f"policy:{dataset}")
    policy = guard.policies.get(dataset).to_dict()
    guard.record("list", dataset, obj=f"policy:{dataset}")
    if json_out:
        print_json(policy)
        return
    console.print(table(f"policy of {dataset}", ["field", "value"], policy.items()))


@policy_app.command("set")
def policy_set(
    dataset: str,
    license: Annotated[list[str] | None, typer.Option(help="SPDX id (repeatable).")] = None,
    purpose: Annotated[list[str] | None, typer.Option(help="Allowed purpose (repeatable).")] = None,
    consent: Annotated[list[str] | None, typer.Option(help="Consent basis (repeatable).")] = None,
    jurisdiction: Annotated[list[str] | None, typer.Option(help="Jurisdiction (repeatable).")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Restriction tag such as pii:raw (repeatable).")] = None,
    retention_days: Annotated[float | None, typer.Option(help="Expire versions older than this.")] = None,
    keep_versions: Annotated[int | None, typer.Option(help="Keep only the newest N versions.")] = None,
    encrypt: Annotated[bool | None, typer.Option("--encrypt/--no-encrypt", help="Encrypt new shards.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Owning tenant.")] = None,
) -> None:
    """Update a dataset's policy (only the given fields change)."""
    from dataclasses import replace

    guard = _guard()
    old = guard.policies.get(dataset)
    changes: dict[str, Any] = {k: frozenset(v) for k, v in {
        "licenses": license, "purposes": purpose, "consent": consent, "jurisdictions": jurisdiction, "tags": tag,
    }.items() if v}
    changes.update({k: v for k, v in {"retention_days": retention_days, "keep_versions": keep_versions,
                                      "encrypt": encrypt, "tenant": tenant}.items() if v is not None})
    try:
        new = replace(old, **changes)
    except ValueError as exc:
        fail(str(exc))
    guard.set_policy(dataset, new)
    console.print(table(f"policy of {dataset}", ["field", "value"], new.to_dict().items()))


@policy_app.command("derive")
def policy_derive(target: str, source: Annotated[list[str], typer.Option("--from", help="Source dataset.")]) -> None:
    """Merge source policies into TARGET's (most restrictive wins) and flag license conflicts."""
    derived = _guard().propagate(target, source)
    console.print(table(f"policy of {target}", ["field", "value"], derived.to_dict().items()))


@policy_app.command("budget")
def policy_budget(dataset: str, epsilon: Annotated[float | None, typer.Option()] = None,
                  delta: Annotated[float, typer.Option()] = 1e-6, json_out: JsonOpt = False) -> None:
    """Show, or set with --epsilon, a dataset's differential-privacy budget."""
    from granary.secure.dp import PrivateStats

    stats = PrivateStats(_guard())
    if epsilon is not None:
        stats.set_budget(dataset, epsilon=epsilon, delta=delta)
    budget = stats.budget(dataset)
    if json_out:
        print_json(budget)
        return
    console.print(table(f"privacy budget of {dataset}", ["", "value"], budget.items()))


@policy_app.command("dp-count")
def policy_dp_count(
    ref: str,
    epsilon: Annotated[float, typer.Option(help="Privacy cost of this release.")],
    column: Annotated[str | None, typer.Option(help="Histogram over this column's values instead.")] = None,
    bins: Annotated[str | None, typer.Option(help="Public, comma-separated bins for --column; others count "
                                              "as 'other' (bins taken from the data would leak).")] = None,
    mechanism: Annotated[str, typer.Option(help="laplace or gaussian.")] = "laplace",
    purpose: Annotated[str | None, typer.Option(help="Declared purpose (to read --column).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Release a private row count (or per-value histogram) of a version, charged to its budget."""
    from granary.secure.dp import PrivateStats

    guard = _guard()
    store = _store(guard)
    version = store.resolve(ref)
    stats = PrivateStats(guard)
    if column is None:
        release = stats.count(version.dataset, version.num_rows, epsilon=epsilon, mechanism=mechanism)  # type: ignore[arg-type]
    else:
        if not bins:
            fail("--column needs --bins: the histogram's bins must be public, not read from the data")
        names = [b.strip() for b in bins.split(",") if b.strip()]
        hist = dict.fromkeys([*names, "other"], 0)
        values = store.read_table(version, columns=[column], purpose=purpose).column(column)
        for c in values.value_counts().to_pylist():
            name = str(c["values"])
            hist[name if name in names else "other"] += int(c["counts"])
        release = stats.histogram(version.dataset, hist, epsilon=epsilon, mechanism=mechanism)  # type: ignore[arg-type]
    if json_out:
        print_json(release.__dict__)
        return
    console.print(f"{release.query} of {ref} = {release.value} ({release.mechanism}, epsilon {release.epsilon:g}, "
                  f"delta {release.delta:g})")


def register(app: typer.Typer) -> None:
    """Add the governance command groups to the main app."""
    app.add_typer(audit_app, name="audit")
    app.add_typer(principal_app, name="principal")
    app.add_typer(token_app, name="token")
    app.add_typer(role_app, name="role")
    app.add_typer(key_app, name="key")
    app.add_typer(policy_app, name="policy")
    app.command("forget")(forget_cmd)
