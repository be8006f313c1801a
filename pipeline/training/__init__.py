"""What trains one configuration or a pack of them: the Keras model, schedules, stopping,
the gradient probe, the device, and the packed networks."""
