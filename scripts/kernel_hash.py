"""Which CPU code path does this machine train on? 15 reference-training steps, then the weights' hash.

    python scripts/kernel_hash.py               # data from params.yaml's data.root (generated if missing)
    python scripts/kernel_hash.py /tmp/ref/data
    ONEDNN_MAX_CPU_ISA=ALL MKL_CBWR=AUTO python scripts/kernel_hash.py   # without clip_unlearn's pins

Always 2 threads, as the committed reference was trained. c16937d908d7 is the hash on the code path that
trained it (0e3a264c, an AVX-512 BF16 EPYC: docs/bootstrap.md, "Determinism"). Another hash means that
`dvc repro` here trains other weights: found in ~30 s instead of a 10-minute training.
"""

import hashlib
import sys

import torch

from clip_unlearn.core.data import load_dataset
from clip_unlearn.core.train import train_reference
from clip_unlearn.pipeline.config import load_params
from clip_unlearn.pipeline.reference import make_data

p = load_params("params.yaml")
if len(sys.argv) > 1:
    p = p.model_copy(update={"data": p.data.model_copy(update={"root": sys.argv[1]})})
make_data(p)
sets = [load_dataset(d, "train", p.data.root) for d in p.data.datasets]
bundle, _ = train_reference(sets, p.bootstrap.model_copy(update={"steps": 15, "log_every": 1000, "threads": 2}), log=lambda _: None)
h = hashlib.sha256()
for _, v in sorted(bundle.model.state_dict().items()):
    h.update(v.detach().cpu().contiguous().numpy().tobytes())
print(f"{h.hexdigest()[:12]}  (ATen {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)")
