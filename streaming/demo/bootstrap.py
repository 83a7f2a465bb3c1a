"""What the demo needs in the registry before it starts: signing keys and a production model."""

from __future__ import annotations

from pathlib import Path

from streaming.demo import PROG
from streaming.features.spec import DEFAULT_SPEC
from streaming.sim.simulator import simulate


def ensure_signing_keys(args) -> tuple[list[str], list[str]]:
    """The registry trust flags for the predictor and for the job. Unless ``--allow-unsigned``,
    the demo's key ring (``--signing-key-file``, generated beside the registry when absent; never
    inside it) signs the models and the learner's snapshots, and the predictor gets only its
    verify-only half."""
    from models.signing import ED25519, KeyRing, generate

    if args.allow_unsigned:
        return ["--allow-unsigned"], ["--allow-unsigned"]
    path = args.signing_key_file or args.registry.parent / f"{args.registry.name}-signing-key.json"
    public = path.with_name(path.stem + ".public.json")
    if not path.exists():
        generate("demo-1", ED25519).save(path)
        print(f"{PROG}: generated the registry signing key {path} (keep it out of the registry)", flush=True)
    ring = KeyRing.load(path)
    if not public.exists() or KeyRing.load(public) != ring.public():
        public.unlink(missing_ok=True)
        ring.save(public, public_only=True)
    args.keys = ring
    return ["--signing-key-file", str(public)], ["--signing-key-file", str(path)]


def ensure_production_model(registry_dir: Path, args) -> str:
    """The production version, training one on a simulated history first if there is none
    (or if the one there is not signed by the demo's key)."""
    from models.registry import Registry, RegistryError
    from models.training import booster_params
    from streaming.features.batch import featurize_frame

    registry = Registry.open(registry_dir, keys=getattr(args, "keys", None))
    try:
        return registry.metadata(registry.resolve())["version"]
    except RegistryError as exc:
        if "no version is in production" not in str(exc):
            print(f"{PROG}: the production model is not usable here ({exc})", flush=True)
    import xgboost as xgb

    print(f"{PROG}: no production model in {registry_dir}; training one on a simulated history ...", flush=True)
    history = simulate(customers=args.customers, terminals=args.terminals, days=args.history_days, seed=args.seed + 1)
    table = featurize_frame(history)
    names = list(DEFAULT_SPEC.names)
    params, rounds = booster_params({"max_depth": 6, "learning_rate": 0.1, "n_estimators": 100}, seed=args.seed, nthread=2)
    dtrain = xgb.DMatrix(table[names].to_numpy(), label=table["TX_FRAUD"].to_numpy(), feature_names=names)
    booster = xgb.train(params, dtrain, num_boost_round=rounds)
    version = registry.register(booster, {
        "feature_names": names, "params": {**params, "n_estimators": rounds},
        "data": {"source": "streamscore simulate", "seed": args.seed + 1, "rows": len(table),
                 "frauds": int(table["TX_FRAUD"].sum()), "days": args.history_days,
                 **training_table(registry_dir, table)},
    }, spec_hash=DEFAULT_SPEC.spec_hash)
    registry.promote(version)
    print(f"{PROG}: trained and promoted {version} ({len(table):,} transactions)", flush=True)
    return version


def training_table(registry_dir: Path, table) -> dict:
    """Keep the demo model's feature table next to the registry and say where, with its training window:
    the online learner's warm start (models/online_start.py) learns those rows."""
    path = (Path(registry_dir) / "training" / "features.parquet").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path)
    days = table["TX_DATETIME"].dt.date
    return {"features": str(path), "split": {"train": [str(days.min()), str(days.max())]}}
