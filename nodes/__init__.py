"""Programs that run on the emulated hosts: the UE client, the MEC executor, the geth miners."""
