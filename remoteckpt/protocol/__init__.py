"""Many workers, one checkpoint: the save protocol.

    layout       where every file of a save lives (final names, staging names)
    commit       how the `.index` becomes visible: the swappable commit protocol object
    save         the worker's and the coordinator's steps
"""
