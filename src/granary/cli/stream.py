"""Tokenization and streaming commands: tokenize, tokenizer train, peek, stream-bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from granary.cli.common import EncryptOpt, PurposeOpt, apply_encrypt, read_store
from granary.cli.output import console, err_console, print_json, progress, table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def tokenize(
    ref: Annotated[str, typer.Argument(help="Documents version to tokenize (name, name@branch, name@tag, name@id).")],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", "-t", help="tokenizer.json or tiktoken rank file.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Tokens dataset to write (created if missing).")],
    seq_len: Annotated[int | None, typer.Option(help="Training sequence length (reported, recorded).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (one documents shard each at a time).")] = 1,
    eot_token: Annotated[str | None, typer.Option(help="End-of-document token (default: found).")] = None,
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    encrypt: EncryptOpt = False,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Tokenize a documents version into a tokens version (parallel, resumable: rerun after a crash)."""
    from granary.stream.tokenize import TokenizeConfig
    from granary.stream.tokenize import tokenize as run

    apply_encrypt(encrypt)
    store = read_store(purpose)
    config = TokenizeConfig(tokenizer=str(tokenizer), output=output, seq_len=seq_len, workers=workers,
                            eot_token=eot_token, text_column=text_column)
    total = store.resolve(ref).num_rows
    with progress(disable=json_out) as bar:
        task = bar.add_task(f"tokenize {ref}", total=total)
        report = run(store, ref, config, on_shard=lambda docs: bar.advance(task, docs))
    if json_out:
        print_json(report.to_dict())
        return
    rows: list[tuple[str, Any]] = [("version", report.version.ref), ("documents", report.documents),
                                   ("tokens", report.tokens), ("shards", report.shards),
                                   ("resumed shards", report.resumed_shards)]
    rows += [(f"tokens/doc {k}", f"{v:.1f}") for k, v in report.tokens_per_doc.items()]
    if report.samples is not None:
        rows.append((f"samples of {seq_len}", report.samples))
    console.print(table("Tokenized", ["", "value"], rows))


def train(
    ref: Annotated[str, typer.Argument(help="Documents version to train on.")],
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size (>= 260).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Path of the tokenizer.json to write.")],
    max_documents: Annotated[int | None, typer.Option(help="Train on at most this many documents.")] = None,
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    purpose: PurposeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Train a byte-level BPE tokenizer on a dataset (offline) and save it as tokenizer.json."""
    from granary.stream.tokenizer import Tokenizer, train_bpe

    store = read_store(purpose)

    def texts() -> Any:
        seen = 0
        for batch in store.iter_batches(ref, columns=[text_column]):
            for text in batch.column(0).to_pylist():
                if max_documents is not None and seen >= max_documents:
                    return
                seen += 1
                yield text or ""

    path = train_bpe(texts(), vocab_size=vocab_size, output=output)
    info = Tokenizer(path).info
    short = info.vocab_size < vocab_size
    if short:
        err_console.print(f"[yellow]warning:[/] the vocabulary has {info.vocab_size:,} tokens, not the "
                          f"{vocab_size:,} asked for: no pair of tokens occurs often enough in this text for more "
                          "merges; train on more documents or ask for a smaller --vocab-size", highlight=False,
                          soft_wrap=True)
    if as_json:
        print_json({"path": str(path), "vocab_size": info.vocab_size, "requested_vocab_size": vocab_size,
                    "eot_id": info.eot_id, "sha256": info.sha256, "short": short})
        return
    console.print(table("Tokenizer trained", ["", "value"],
                        [("path", path), ("vocab size", info.vocab_size), ("eot id", info.eot_id),
                         ("sha256", info.sha256[:16])]))


def peek(
    ref: Annotated[str, typer.Argument(help="Tokens or documents version.")],
    seq_len: Annotated[int, typer.Option(help="Tokens per sample (tokens versions).")] = 64,
    count: Annotated[int, typer.Option("--count", "-n", help="Samples to show.")] = 3,
    seed: Annotated[int, typer.Option(help="Shuffle seed.")] = 0,
    shuffle: Annotated[bool, typer.Option(help="Show shuffled samples (else the first ones).")] = False,
    tokenizer: Annotated[Path | None, typer.Option(help="Decode with this tokenizer (checked against lineage).")]
    = None,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the first samples a loader would yield (tokens decoded when a tokenizer is given)."""
    from granary.stream import StreamingDataset

    store = read_store(purpose)
    kind = store.resolve(ref).kind
    ds = StreamingDataset(ref, batch_size=count, seq_len=seq_len if kind == "tokens" else None, seed=seed,
                          shuffle=shuffle, store=store, output="numpy", num_threads=0, rank=0, world_size=1)
    batch = next(iter(ds))
    if kind == "documents":
        rows = [dict(r) for r in batch]
    else:
        rows = _token_rows(store, ref, batch["tokens"], tokenizer)
    if json_out:
        print_json({"ref": ref, "kind": kind, "samples_per_epoch": ds.num_samples, "samples": rows})
        return
    console.print(f"{ref}: {kind}, {ds.num_samples} samples per epoch")
    columns = list(rows[0]) if rows else []
    console.print(table(None, columns, [[str(r[c])[:200] for c in columns] for r in rows]))


def _token_rows(store: Any, ref: str, tokens: Any, tokenizer: Path | None) -> list[dict[str, Any]]:
    rows = [{"tokens": " ".join(map(str, t[:24].tolist())) + (" ..." if len(t) > 24 else "")} for t in tokens]
    if tokenizer is not None:
        from granary.stream.tokenize import check_tokenizer
        from granary.stream.tokenizer import Tokenizer

        check_tokenizer(store, ref, tokenizer)
        tok = Tokenizer(tokenizer)
        for row, t in zip(rows, tokens, strict=True):
            row["text"] = tok.decode(t.tolist())
    return rows


def stream_bench(
    ref: Annotated[str | None, typer.Argument(help="Tokens version (default: a synthetic one in a temp store).")]
    = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per sample.")] = 2048,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 64,
    samples: Annotated[int, typer.Option(help="Synthetic samples (without REF).")] = 32768,
    purpose: PurposeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure the loader: samples/s, GB/s, shards per batch, resume latency (and the numpy anchor)."""
    import tempfile

    from granary.config import Settings
    from granary.store import open_store
    from granary.stream import bench

    with tempfile.TemporaryDirectory(prefix="granary-bench-") as tmp:
        if ref is None:
            store = open_store(Settings.from_env(home=Path(tmp)))
            ref = "bench"
            bench.build_synthetic(store, ref, samples=samples, seq_len=seq_len)
        else:
            store = read_store(purpose)
        result = {"loader": bench.measure_loader(store, ref, seq_len=seq_len, batch_size=batch_size),
                  **bench.measure_resume(store, ref, seq_len=seq_len, batch_size=batch_size)}
    if json_out:
        print_json(result)
        return
    loader = result.pop("loader")
    rows = [(k, f"{v:,.3f}" if isinstance(v, float) else v) for k, v in {**loader, **result}.items()]
    console.print(table(f"stream-bench {ref}", ["metric", "value"], rows))


def register(app: typer.Typer) -> None:
    """Add the tokenization and streaming commands to the app."""
    app.command("tokenize")(tokenize)
    app.command("peek")(peek)
    app.command("stream-bench")(stream_bench)
    group = typer.Typer(help="Train and inspect tokenizers.", no_args_is_help=True)
    group.command("train")(train)
    app.add_typer(group, name="tokenizer")
