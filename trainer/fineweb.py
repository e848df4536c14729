"""`gatesweep data fineweb`: the GPT-2-tokenized FineWeb10B shards the reference trains on.

Files come from the Hugging Face dataset kjj0/fineweb10B-gpt2 (val_000000 + train_000001..103,
100M tokens each), as the reference's `data/cached_fineweb10B.py` fetches them. Resuming is per
file: a file already present with a valid header and full size is skipped without any request.
(huggingface_hub 2.x downloads into a per-process temp file and deletes it on failure, so an
interrupted file starts over.) Every downloaded file is checked and a bad one is deleted, so the
directory only ever holds whole shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import DataError
from trainer.shards import peek_shard

REPO_ID = "kjj0/fineweb10B-gpt2"
DEFAULT_DIR = "data/fineweb10B"
NUM_TRAIN_CHUNKS = 103


@dataclass
class FinewebResult:
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tokens: int = 0


def fineweb_filenames(chunks: int) -> list[str]:
    if not 1 <= chunks <= NUM_TRAIN_CHUNKS:
        raise DataError(f"--chunks={chunks} must be in [1, {NUM_TRAIN_CHUNKS}] ({REPO_ID} has "
                        f"{NUM_TRAIN_CHUNKS} train chunks of 100M tokens; 27 cover a 5100-step reference run)")
    return ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, chunks + 1)]


def _valid_tokens(path: Path) -> int | None:
    """Token count of a complete shard at `path`, or None if it is missing or bad."""
    if not path.is_file():
        return None
    try:
        return peek_shard(path)
    except DataError:
        return None


def download_fineweb(chunks: int, out_dir: str | Path = DEFAULT_DIR, *, endpoint: str | None = None) -> FinewebResult:
    """Fetch val + `chunks` train shards into `out_dir`. `endpoint` defaults to $HF_ENDPOINT, read now
    (huggingface_hub reads it once at import, which may be before the caller set it)."""
    names = fineweb_filenames(chunks)
    out = Path(out_dir)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    result = FinewebResult()
    for name in names:
        dest = out / name
        ntok = _valid_tokens(dest)
        if ntok is not None:
            result.skipped.append(str(dest))
            result.tokens += ntok
            continue
        # A present-but-bad file would be trusted by hf_hub's local_dir metadata; start it over.
        dest.unlink(missing_ok=True)
        _hub_download(name, out, endpoint)
        try:
            ntok = peek_shard(dest)
        except DataError as e:
            dest.unlink(missing_ok=True)
            raise DataError(f"{e} [downloaded from {endpoint or 'huggingface.co'}; the bad file was "
                            f"removed - run the command again to retry]") from None
        result.downloaded.append(str(dest))
        result.tokens += ntok
    return result


def _hub_download(name: str, out: Path, endpoint: str | None) -> None:
    try:
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DataError("downloading FineWeb needs huggingface_hub: pip install huggingface_hub "
                        "(or gatesweep[data])") from None
    where = f"{REPO_ID} at {endpoint or 'https://huggingface.co'}"
    try:
        hf_hub_download(repo_id=REPO_ID, filename=name, repo_type="dataset", local_dir=out, endpoint=endpoint)
    except hf_errors.LocalEntryNotFoundError as e:
        # Raised when the hub cannot be asked at all (offline mode, or the server is unreachable after
        # hf_hub's own retries) and no local copy exists; it subclasses EntryNotFoundError, so it goes first.
        if _truthy(os.environ.get("HF_HUB_OFFLINE")):
            raise DataError(f"{name}: HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it, or use "
                            f"`gatesweep data text` / `data synth` for offline data") from None
        raise DataError(f"{name}: cannot fetch from {where} ({_first_line(e.__cause__ or e)}); check the network "
                        f"or HF_ENDPOINT and run again") from None
    except hf_errors.EntryNotFoundError:
        raise DataError(f"{name}: not found in dataset {where}; lower --chunks or check HF_ENDPOINT") from None
    except hf_errors.RepositoryNotFoundError:
        raise DataError(f"{name}: dataset {where} not found; check HF_ENDPOINT (unset it for huggingface.co)") from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        raise DataError(f"{name}: download from {where} failed ({_first_line(e)}); check the network or "
                        f"HF_ENDPOINT and run again") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
