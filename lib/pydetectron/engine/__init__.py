"""Training and the tools' inference runs: everything around the model that trains or tests it.

- ``lr_policy``: Detectron's LR policies and warm-up, per iteration.
- ``optimizer``: the seed's parameter groups (2x LR and no decay for biases, WEIGHT_DECAY_GN) and
  ``MomentumSGD``, Caffe2's momentum update that Detectron trains with.
- ``solver``: ``LRScheduler``, the per-iteration LR with Detectron's momentum correction.
- ``checkpoint``: atomic ``ckpt/model_step{N}.pth`` files, ``weights_only`` loading, RNG states,
  newest-complete lookup, architecture-mismatch messages.
- ``trainer``: ``Trainer``, the loop (iter_size accumulation, bf16 autocast, NaN and signal stops,
  snapshots, exact resume).
- ``interrupt``: deferred SIGINT / SIGTERM handling.
- ``training_stats``: median-smoothed console statistics and TensorBoard scalars.
- ``distributed``: torchrun / DistributedDataParallel set-up, minibatch sharding.
- ``train_setup``: the seed's adaptive config changes, run names, weights-file checks.
- ``launch``: ``tools/train_net_step.py``'s body.
- ``inference``: ``run_inference``, the test tools' inference over datasets: the model built from
  the command line's weights, one process or ``--range`` children, their results merged and
  evaluated (one process's pass over a dataset is ``core.test_engine``'s).
- ``speed_options``: the tools' ``--channels_last`` and ``--compile [MODE]``.
- ``cli``: one-line user errors (``run_tool``), argument types and input checks.
"""
