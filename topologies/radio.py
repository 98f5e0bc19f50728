"""The radio model of the ``cells`` topology: a UE's link rate from its distance to its site.

**Path loss: 3GPP TR 38.901 V17, Table 7.4.1-1, UMi-Street Canyon** (fc in GHz, distances m)::

    d_3D  = sqrt(d_2D^2 + (h_BS - h_UT)^2)
    d'_BP = 4 (h_BS - 1 m)(h_UT - 1 m) f_c / c                      (breakpoint distance)
    LOS   PL1 = 32.4 + 21 log10(d_3D) + 20 log10(f_c)                  10 m <= d_2D <= d'_BP
          PL2 = 32.4 + 40 log10(d_3D) + 20 log10(f_c)
                - 9.5 log10(d'_BP^2 + (h_BS - h_UT)^2)                 d'_BP <= d_2D <= 5 km
    NLOS  PL  = max(PL_LOS, 35.3 log10(d_3D) + 22.4 + 21.3 log10(f_c) - 0.3 (h_UT - 1.5))

No shadow fading and no fast fading: the rate is a deterministic function of distance, so a
seed fixes every link (the standard's shadow-fading sigma is 4 dB LOS, 7.82 dB NLOS).
``d_2D`` is clamped to [10 m, 5 km], the range where the formulas hold.

**Rate: Shannon over the bandwidth, capped** (uplink: the UE transmits, the site receives)::

    N    = -174 dBm/Hz + 10 log10(B) + NF                  thermal noise + receiver noise figure
    SNR  = P_tx - PL - N                                   dB
    rate = clamp(B log2(1 + SNR), min_rate, B * eta_max)   bit/s

``eta_max`` (default 7.4 bit/s/Hz) is the highest spectral efficiency of 3GPP's 256-QAM CQI
table (TS 38.214 Table 5.1.3.1-2), so a UE next to its site does not get an unbounded rate;
``min_rate`` keeps a UE at the cell edge connected (htb needs a positive rate). The testbed
shapes the UE's access link to this rate in both directions.

With the defaults (3.5 GHz, 20 MHz, 23 dBm, NF 7 dB, NLOS, h_BS 10 m, h_UT 1.5 m) the rate is
148 Mbit/s (the cap) up to 52 m, 84 Mbit/s at 100 m, 50 Mbit/s at 145 m, 10 Mbit/s at 289 m,
1.7 Mbit/s at 500 m and 1 Mbit/s (the floor) from 580 m: ``python -m topologies.radio``
prints the curve.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

C_M_PER_S = 299_792_458.0
THERMAL_NOISE_DBM_PER_HZ = -174.0
MIN_D2D_M, MAX_D2D_M = 10.0, 5000.0
MODEL_NAME = ("3GPP TR 38.901 UMi-Street Canyon path loss (no fading) + Shannon rate over the "
              "bandwidth, capped at the 256-QAM spectral efficiency")


@dataclass(frozen=True)
class RadioModel:
    """Parameters of the model (units in the names); built from a ``TopologyConfig``."""
    carrier_ghz: float = 3.5
    bandwidth_mhz: float = 20.0
    tx_power_dbm: float = 23.0
    noise_figure_db: float = 7.0
    bs_height_m: float = 10.0
    ue_height_m: float = 1.5
    los: bool = False
    max_spectral_eff: float = 7.4
    min_rate_mbit: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> "RadioModel":
        return cls(carrier_ghz=cfg.radio_carrier_ghz, bandwidth_mhz=cfg.radio_bandwidth_mhz,
                   tx_power_dbm=cfg.radio_tx_power_dbm, noise_figure_db=cfg.radio_noise_figure_db,
                   bs_height_m=cfg.radio_bs_height_m, ue_height_m=cfg.radio_ue_height_m,
                   los=cfg.radio_los, max_spectral_eff=cfg.radio_max_spectral_eff,
                   min_rate_mbit=cfg.radio_min_rate_mbit)

    def d3d_m(self, d2d_m: float) -> float:
        d2d = min(max(d2d_m, MIN_D2D_M), MAX_D2D_M)
        return math.hypot(d2d, self.bs_height_m - self.ue_height_m)

    def path_loss_db(self, d2d_m: float) -> float:
        """UMi-Street Canyon path loss at horizontal distance ``d2d_m`` (dB)."""
        fc, hbs, hut = self.carrier_ghz, self.bs_height_m, self.ue_height_m
        d2d = min(max(d2d_m, MIN_D2D_M), MAX_D2D_M)
        d3d = self.d3d_m(d2d)
        d_bp = 4 * (hbs - 1.0) * (hut - 1.0) * fc * 1e9 / C_M_PER_S
        if d2d <= d_bp:
            pl_los = 32.4 + 21 * math.log10(d3d) + 20 * math.log10(fc)
        else:
            pl_los = (32.4 + 40 * math.log10(d3d) + 20 * math.log10(fc)
                      - 9.5 * math.log10(d_bp ** 2 + (hbs - hut) ** 2))
        if self.los:
            return pl_los
        pl_nlos = 35.3 * math.log10(d3d) + 22.4 + 21.3 * math.log10(fc) - 0.3 * (hut - 1.5)
        return max(pl_los, pl_nlos)

    def noise_dbm(self) -> float:
        return THERMAL_NOISE_DBM_PER_HZ + 10 * math.log10(self.bandwidth_mhz * 1e6) + self.noise_figure_db

    def snr_db(self, d2d_m: float) -> float:
        return self.tx_power_dbm - self.path_loss_db(d2d_m) - self.noise_dbm()

    @property
    def max_rate_mbit(self) -> float:
        return self.max_spectral_eff * self.bandwidth_mhz

    def rate_mbit(self, d2d_m: float) -> float:
        """The UE's link rate at horizontal distance ``d2d_m`` from its site (Mbit/s)."""
        shannon = self.bandwidth_mhz * math.log2(1 + 10 ** (self.snr_db(d2d_m) / 10))
        return min(max(shannon, self.min_rate_mbit), self.max_rate_mbit)

    def propagation_delay_ms(self, d2d_m: float) -> float:
        """Line-of-sight propagation delay d_3D / c (ms): microseconds at cell sizes."""
        return self.d3d_m(d2d_m) / C_M_PER_S * 1e3

    def describe(self) -> dict:
        return {"model": MODEL_NAME, **asdict(self)}


def rate_table(model: RadioModel, distances_m=(10, 25, 50, 100, 150, 200, 300, 400, 500, 700)) -> list[dict]:
    """Path loss, SNR and rate at a few distances (for docs and the report)."""
    return [{"d2d_m": d, "path_loss_db": round(model.path_loss_db(d), 1),
             "snr_db": round(model.snr_db(d), 1), "rate_mbit": round(model.rate_mbit(d), 2)}
            for d in distances_m]


if __name__ == "__main__":
    import json
    m = RadioModel()
    print(json.dumps({**m.describe(), "table": rate_table(m)}, indent=1))
