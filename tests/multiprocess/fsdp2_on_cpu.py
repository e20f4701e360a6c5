"""``ropekit.train`` under accelerate's FSDP2 code path on CPU processes (gloo), for tests/test_parallel.py.

Run with ``accelerate launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 --mixed_precision no
fsdp2_on_cpu.py OPTIONS_JSON SHARDS_DIR``.

accelerate 1.15 turns the config's ``ACCELERATE_USE_FSDP`` into ``DistributedType.FSDP`` only for GPU-type launches
(accelerate/state.py, ``AcceleratorState.__init__``); a CPU launch becomes ``MULTI_CPU`` without a word, so the
same command trains plain data parallel (every process holds the whole model). This script lifts that one gate and
nothing else: the FSDP plugin accelerate built from the config is kept, so accelerate's ``fsdp2_prepare_model``
(``fully_shard`` on each decoder layer, the embedding, the [norm, lm_head] tail and the root; rank-0 loading),
its gradient clipping, and the Trainer's FULL_STATE_DICT save all run unchanged. At the first step each process
writes what it holds to SHARDS_DIR/rank{r}.json, so the test can see the model really was sharded.
"""

import json
import sys
from pathlib import Path

import accelerate.state
from accelerate.utils import DistributedType
from transformers import TrainerCallback

from ropekit.training.api import TrainOptions, close_process_group, train

_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP  # shared by every AcceleratorState/PartialState of the process
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu


class RecordShards(TrainerCallback):
    def __init__(self, folder: Path):
        self.folder = folder

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != 1:
            return
        import torch.distributed as dist
        from torch.distributed.fsdp import FSDPModule

        embedding = model.get_input_embeddings().weight
        local = embedding.to_local() if hasattr(embedding, "to_local") else embedding
        record = {"fsdp_module": isinstance(model, FSDPModule), "placements": str(getattr(embedding, "placements", None)),
                  "embedding_rows": list(embedding.shape)[0], "local_embedding_rows": list(local.shape)[0],
                  "sharded_layers": sum(isinstance(m, FSDPModule) for m in model.modules())}
        (self.folder / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    shards = Path(sys.argv[2])
    shards.mkdir(parents=True, exist_ok=True)
    train(TrainOptions(**json.loads(sys.argv[1])), callbacks=[RecordShards(shards)])
    close_process_group()  # left to interpreter exit, gloo's threads once aborted a finished run
