"""Where a run's config comes from, parsed in one place: preset < config file < env vars < key=value.

The study's quick-start environment variables (ATTNGATE=elementwise torchrun ... ) keep working.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from trainer import yamlsafe
from trainer.config import FIELD_SECTION, SECTIONS, TrainConfig, coerce, locate
from trainer.errors import ConfigError

ENV_KEYS = {
    "ATTNGATE": "attn_gate", "GATEPOS": "gate_pos", "GATEACT": "gate_act", "LR": "learning_rate",
    "SEED": "seed", "NUM_ITERATIONS": "num_iterations", "WARMUP_ITERS": "warmup_iters",
    "WARMDOWN_ITERS": "warmdown_iters", "VAL_EVERY": "val_every",
}


def parse_kv(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings -> dict; values are YAML scalars (numbers, true/false); text stays as typed."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not key=value; write e.g. learning_rate=0.0036")
        try:
            value = yamlsafe.load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        # Flow-style YAML is not a scalar (the config check decides), and text stays as typed: YAML
        # would read `notes=run #2` as 'run' (a comment) and `tracking.experiment='x'` without quotes.
        if isinstance(value, (dict, list, str)):
            value = raw
        out[key.strip()] = value
    return out


def flatten_sections(data: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Accept flat keys or `{model: {...}, optim: {...}}` sections."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        else:
            out[str(key)] = value
    return out


def read_config_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flat config values, trial metadata) from a YAML config or a launcher's trial.json."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found; pass a YAML file or key=value overrides")
    try:
        text = p.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is not content
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); is it the config file?") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yamlsafe.load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {yamlsafe.problem(e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    if "config" in data and isinstance(data["config"], Mapping):  # trial.json
        return flatten_sections(data["config"], source=path), dict(data.get("trial", {}))
    return flatten_sections(data, source=path), {}


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {ENV_KEYS[k]: v for k, v in environ.items() if k in ENV_KEYS and v != ""}


def resolve(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """argv = [CONFIG] [key=value ...] -> (config, trial metadata)."""
    files = [a for a in argv if "=" not in a]
    if len(files) > 1:
        raise ConfigError(f"expected at most one config file, got {files}; overrides are key=value")
    values, meta = read_config_file(files[0]) if files else ({}, {})
    source = files[0] if files else "config"
    cli = _cli_values([a for a in argv if "=" in a])
    preset = cli.pop("preset", values.pop("preset", "reference"))
    cfg = TrainConfig.from_flat({"preset": preset, **values}, source=source)
    env = env_overrides(environ)
    names = [name for name, key in ENV_KEYS.items() if key in env]
    for name in names:  # a bad value names its variable
        key = ENV_KEYS[name]
        coerce(FIELD_SECTION[key], key, env[key], source=f"environment variable {name}")
    for raw_key, value in cli.items():
        coerce(*locate(raw_key, source="command line"), value, source="command line")
    # Env and key=value are applied and validated together (key=value wins): a check across fields
    # (warmup_iters <= num_iterations) must see the final values, not an intermediate config that
    # depends on the order of the environment.
    where = [f"environment variable{'s' if len(names) > 1 else ''} {', '.join(names)}"] if names else []
    where += ["command line"] if cli or not names else []
    return cfg.override({**env, **cli}, source=" and ".join(where)), meta


# str fields keep the text as typed: YAML would read run_id=0123 as the octal number 83 (changing
# the run that is resumed) and notes=yes as True.
_STR_KEYS = frozenset(k for k, v in TrainConfig().flat().items() if isinstance(v, str))


def _cli_values(items: Sequence[str]) -> dict[str, Any]:
    values = parse_kv(items)
    for item in items:
        key, _, raw = item.partition("=")
        if key.strip().rsplit(".", 1)[-1] in _STR_KEYS:
            values[key.strip()] = raw
    return values
