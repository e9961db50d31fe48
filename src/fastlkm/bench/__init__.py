"""``fastlkm bench``: the lookups of a loading session replayed by every strategy
(:mod:`~fastlkm.bench.run`), and their report (:mod:`~fastlkm.bench.report`, tables and
JSON) and plot (:mod:`~fastlkm.bench.plot`)."""
