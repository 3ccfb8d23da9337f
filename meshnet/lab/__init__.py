"""Simulated hosts in network namespaces: `meshnet lab`, used by people to try meshnet on one
machine and by our own tests."""
