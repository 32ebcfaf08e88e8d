"""Operator access over MQTT: the service's desk (signed requests, the retained fleet
summary), the client field tools use, and the fleet rows both show."""
