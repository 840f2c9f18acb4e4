"""The data model and where it lives: samples and their labels (:mod:`.collection`), the project
folder on disk (:mod:`.store`, :mod:`.locks`), image and mask decoding (:mod:`.images`), dataset
importers (:mod:`.importers`), weak labels simulated from masks (:mod:`.hybridize`) and the shipped
sample data (:mod:`.sample_data`)."""
