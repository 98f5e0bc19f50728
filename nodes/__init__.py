"""Programs that run on the emulated hosts: the UE client (in its container), the MEC
executor and its work kernel (in a MEC host), the payer's and payee's channel lanes and the
wire protocol between UE and executor; ``docker/`` the UE image. The geth miners they run
beside are the ``chain`` package's."""
