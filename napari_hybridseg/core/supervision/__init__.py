"""Weak labels -> training targets (:mod:`.targets`) and the losses on them (:mod:`.losses`)."""
