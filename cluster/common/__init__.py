"""What the backends share: spec -> trials (prepare), trial state (state), the run directory and its
locks (trialdir), the MLflow parent/child runs of a sweep (store) and the delivery of local records
(delivery), the progress display, the sweep's compile cache, and the sequential-seeds run loop."""
