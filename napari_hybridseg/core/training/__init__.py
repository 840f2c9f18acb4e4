"""Training: settings (:mod:`.config`), the trainer generator (:mod:`.trainer`), its reports and
commands (:mod:`.reports`), batches (:mod:`.batches`) and the run folder (:mod:`.checkpoint`)."""
