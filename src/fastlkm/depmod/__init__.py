"""depmod, as kmod's tools/depmod.c, one file per step of a run:

- :mod:`~fastlkm.depmod.run`: the driver, ``fastlkm depmod`` (main_depmod())
- :mod:`~fastlkm.depmod.config`: depmod.d (cfg_load())
- :mod:`~fastlkm.depmod.modfiles`: the modules directory and its walk
  (depmod_modules_search())
- :mod:`~fastlkm.depmod.scan` (+ ``_scan.c``): what depmod reads of one module file
- :mod:`~fastlkm.depmod.inputs`: the modules of a run through the facts cache, the
  kernel's symbols of -F/-E
- :mod:`~fastlkm.depmod.cache`: the outputs of an unchanged tree
- :mod:`~fastlkm.depmod.compute`: depmod_load()'s phases
- :mod:`~fastlkm.depmod.output`: every file depmod writes (depmod_output())
- :mod:`~fastlkm.depmod.kmod_index` (+ ``_kmod_index.c``): kmod's binary index
- :mod:`~fastlkm.depmod.write`: the outputs written atomically
- :mod:`~fastlkm.depmod.probe`: what modprobe inserts for a module, in its order (the
  one rule for module dependencies, used by the loader's callers)

Kept empty of imports: a warm run loads only the modules it uses.
"""
