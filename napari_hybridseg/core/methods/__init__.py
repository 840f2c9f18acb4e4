"""The weighting methods: per-image weights (:mod:`.dii`, the Dynamic Instance Indicator),
dynamic co-regularisation (:mod:`.dcr`), meta-learned pixel weights (:mod:`.pixel_weights`) with
their label enhancement (:mod:`.ple`), mean teacher (:mod:`.teacher`) and pictures (:mod:`.pixel_weight_maps`)."""
