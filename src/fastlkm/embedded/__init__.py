"""The lookup tables ``fastlkm hash`` embeds in modules and vmlinux: per export table
``__ksymtab<suffix>.htable`` (a strategy's index over it) and per module ``.undef.hash``
(the hashes of its undefined symbols); layouts in docs/lookup.md, "Embedded sections".

- :mod:`~fastlkm.embedded.codec`: a strategy's index as stored bytes, and back (no ELF)
- :mod:`~fastlkm.embedded.build`: the sections that index a file's export tables
- :mod:`~fastlkm.embedded.read`: the tables read back from a file, and their check
- :mod:`~fastlkm.embedded.postprocess`: ``fastlkm hash`` and ``fastlkm verify`` over
  files and trees (sorting, embedding, signing, atomic writes)
"""
