"""Devices as the service knows them: the registry, replay windows, enrollment, the control
lanes (enroll / status / eval), tasking, selection and device classes."""
