"""Small vectorised reconstruction library for the toy detector: geometry, nominal constants, raw reader,
measurements, the track fit and its robust batch driver (:mod:`b2luca.reco.robust`)."""
