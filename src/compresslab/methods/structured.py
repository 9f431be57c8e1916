"""The recovery shared by structured pruning (``tp-prune-30``, methods/tp_prune.py): a short
fine-tune of the pruned student, distilled from the unpruned model.

Removing whole heads and channels makes every block's matrices smaller, so the checkpoint shrinks
and dense kernels run faster, but the model loses accuracy that this recovery wins back.
"""

from __future__ import annotations

from compresslab.methods.base import StageContext
from compresslab.methods.training import distillation_loss, training_batches
from compresslab.models.finetune import FinetuneConfig, train

CHANNEL_MULTIPLE = 8  # kept MLP widths are multiples of 8: GEMM kernels prefer them
# the recovery fine-tune of a pruned classifier: about 0.6 s a step (student and teacher) on 2 quiet
# cores; the default safety limit is 30x that
RECOVERY = FinetuneConfig(max_steps=200, batch_size=32, learning_rate=1e-4)


def distilled_recovery(student, teacher, ctx: StageContext, config: FinetuneConfig, temperature: float,
                       alpha: float, desc: str) -> dict[str, float]:
    """The pruned student's recovery: ``config``'s steps on the task's training data, distilled from
    the unpruned teacher (frozen here). Returns the training record."""
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return train(student, training_batches(ctx, config), distillation_loss(student, teacher, temperature, alpha),
                 config, desc)
