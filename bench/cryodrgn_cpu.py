"""Run cryoDRGN 4.3.1's command line with one CPU-only bug of its pose tracker undone (for ``--do-pose-sgd``).

``PoseTracker.save`` (cryodrgn/pose.py) converts the translations to box fractions in place:
``t = self.trans_emb.weight.data.cpu().numpy(); t /= self.D``. On a GPU ``.cpu()`` copies, so only the saved file
is divided; on a CPU ``.cpu()`` returns the same storage, so every checkpoint also divides the live translations
the training goes on with by D (bench/RESULTS.md 11b). Here ``save`` is wrapped to put the translations back after
writing, which gives the CPU run the GPU's behaviour; nothing else of cryoDRGN is changed, and the wrapper does
nothing where ``.cpu()`` copies. Used by ``bench/pose_refine.py --cryodrgn``; run with the reference install's
Python::

    bench/cryodrgn-venv/bin/python bench/cryodrgn_cpu.py train_nn particles.mrcs --poses pose.pkl ...
"""

import sys

from cryodrgn import pose
from cryodrgn.command_line import main_commands

_save = pose.PoseTracker.save


def _save_keeping_translations(self, out_pkl):
    live = None
    if self.use_trans:
        live = self.trans if self.emb_type is None else self.trans_emb.weight.data
    kept = None if live is None else live.detach().clone()
    try:
        _save(self, out_pkl)
    finally:
        if kept is not None:
            with __import__("torch").no_grad():
                live.copy_(kept)


pose.PoseTracker.save = _save_keeping_translations

if __name__ == "__main__":
    sys.argv[0] = "cryodrgn"
    sys.exit(main_commands())
