"""The values the dataset job's options take, in a module with no heavy imports: the command
line's parser reads them for every gradex command, and pyarrow and Ray are optional."""

ENGINES = ("local", "ray")
RAY_DEVICES = ("auto", "cpu", "cuda")  # the Ray actors' device, checked against the cluster
MAP_DTYPES = ("uint8", "float16")
DEFAULT_SHARD_SIZE = 512
ERRORS_DIR = "_errors"  # DST's errors table
