"""Published-checkpoint manifests (JSON, one per model), installed as ``rf_bench.registry``."""
