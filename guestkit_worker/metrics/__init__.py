"""The worker's Prometheus metric families (:mod:`.families`), its lean histogram and the
families computed at scrape time (:mod:`.live`)."""
