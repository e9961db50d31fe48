"""The fast loader inside a real kernel: the patch series against Debian's Linux 6.12
(``data/linux/``), the post-link step that fills vmlinux's lookup tables
(:mod:`~fastlkm.kbuild.postlink`), the build (:mod:`~fastlkm.kbuild.build`) and the
measurement under QEMU (:mod:`~fastlkm.kbuild.bench`)."""
