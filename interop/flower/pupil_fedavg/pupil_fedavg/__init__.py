"""Federate a pupil classifier with Flower's FedAvg."""
