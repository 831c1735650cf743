"""One realistic, fully populated sample of every event type (for tests, docs and demos)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.models import (
    Disposition,
    EventBase,
    InspectionResult,
    LotQuantity,
    LotStatus,
    LotStatusChanged,
    LotTransformed,
    MaterialReceived,
    Measurement,
    NonconformanceRaised,
    OperationCompleted,
    Severity,
    TargetKind,
    Transformation,
    UnitAssembled,
    UnitRef,
    UnitRemoved,
    UnitShipped,
    UnitTested,
    Verdict,
)

__all__ = ["sample_events", "SAMPLE_TIME"]

SITE = "plant-a"
PROGRAM = "PRG-ALPHA"
SAMPLE_TIME = datetime(2026, 11, 26, 10, 15, 0, 123000, tzinfo=UTC)


def sample_events() -> list[EventBase]:
    """One event per type, every nullable field set, in a plausible floor order."""
    t = SAMPLE_TIME
    pcb = UnitRef(part_number="PCB-100", serial_number="SN000123")
    lru = UnitRef(part_number="LRU-300", serial_number="SN000045")
    die = UnitRef(part_number="DIE-7", serial_number="W12-X04-Y17")
    return [
        MaterialReceived(
            event_id="0b5e7c1e-0c56-4f3e-9a52-6d1f0b1e0001",
            event_time=t,
            source="erp-sap-01",
            site=SITE,
            program=PROGRAM,
            lot_id="L-2026-0001",
            part_number="RES-0402-10K",
            supplier_id="SUP-ACME",
            supplier_lot="ACME-77812",
            quantity=10000.0,
            unit_of_measure="EA",
            coc_reference="COC-ACME-2026-1183",
            inspection_result=InspectionResult.ACCEPTED,
        ),
        LotTransformed(
            event_id="0b5e7c1e-0c56-4f3e-9a52-6d1f0b1e0002",
            event_time=t + timedelta(hours=1),
            source="mes-01",
            site=SITE,
            program=PROGRAM,
            lot_id="L-2026-0002",
            part_number="RES-0402-10K",
            transformation=Transformation.SPLIT,
            inputs=[LotQuantity(lot_id="L-2026-0001", quantity=2500.0)],
            quantity=2500.0,
            unit_of_measure="EA",
            work_order="WO-5001",
            station_id="KIT-1",
        ),
        OperationCompleted(
            event_id="0b5e7c1e-0c56-4f3e-9a52-6d1f0b1e0003",
            event_time=t + timedelta(hours=2),
            source="cell-7-gw",
            site=SITE,
            program=PROGRAM,
            unit=pcb,
            work_order="WO-5002",
            operation="0010 SMT placement",
            station_id="SMT-LINE-2",
            operator_id="OP-1042",
            started_at=t + timedelta(hours=1, minutes=55),
            finished_at=t + timedelta(hours=2),
            creates_unit=True,
            consumed_lots=[LotQuantity(lot_id="L-2026-0002", quantity=12.0)],
            consumed_units=[die],
        ),
        UnitTested(
            event_id="0b5e7c1e-0c56-4f3e-9a52-6d1f0b1e0004",
            event_time=t + timedelta(hours=3),
            source="ict-bench-3",
            site=SITE,
            program=PROGRAM,
            unit=pcb,
            bench_id="ICT-3",
            procedure_id="TP-PCB-100",
            procedure_version="C.2",
            calibration_id="CAL-ICT-3-2026-07",
            calibration_due=t + timedelta(days=120),
            operator_id="OP-2001",
            started_at=t + timedelta(hours=2, minutes=58),
            finished_at=t + timedelta(hours=3),
            measurements=[
                Measurement(name="VCC_3V3", value=3.31, unit="V", low_limit=3.2, high_limit=3.4, passed=True),
                Measurement(
                    name="I_IDLE", value=41.5, unit="mA", low_limit=None, high_limit=60.0, passed=True
                ),
            ],
            verdict=Verdict.PASS,
        ),
        UnitAssembled(
            event_id="6f1c0c6e-5b0e-4bb5-9b7e-0f7f2f6c1a01",
            event_time=t + timedelta(hours=4),
            source="cell-7-gw",
            site=SITE,
            program=PROGRAM,
            unit=pcb,
            parent=lru,
            position="A3",
            work_order="WO-6001",
            station_id="ASSY-4",
            operator_id="OP-1042",
        ),
        UnitRemoved(
            event_id="0b5e7c1e-0c56-4f3e-9a52-6d1f0b1e0006",
            event_time=t + timedelta(hours=5),
            source="cell-7-gw",
            site=SITE,
            program=PROGRAM,
            unit=pcb,
            parent=lru,
            position="A3",
            reason="rework",
            work_order="WO-6002",
            station_id="REWORK-1",
            operator_id="OP-1043",
        ),
        UnitShipped(
            event_id="0b5e7c1e-0c56-4f3e-9a52-6d1f0b1e0007",
            event_time=t + timedelta(days=2),
            source="erp-sap-01",
            site=SITE,
            program=PROGRAM,
            unit=lru,
            shipment_id="DN-88120",
            customer_id="CUST-NAVY",
            contract="N00019-26-C-0001",
            destination_site="NAS-PAX",
            end_system="BUNO-169001",
        ),
        LotStatusChanged(
            event_id="0b5e7c1e-0c56-4f3e-9a52-6d1f0b1e0008",
            event_time=t + timedelta(days=3),
            source="qms-01",
            site=SITE,
            program=PROGRAM,
            lot_id="L-2026-0001",
            status=LotStatus.HOLD,
            reason="supplier notice SN-42",
        ),
        NonconformanceRaised(
            event_id="0b5e7c1e-0c56-4f3e-9a52-6d1f0b1e0009",
            event_time=t + timedelta(days=3, hours=1),
            source="qms-01",
            site=SITE,
            program=PROGRAM,
            ncr_id="NCR-2026-0042",
            target_kind=TargetKind.SUPPLIER_LOT,
            target_id="SUP-ACME:ACME-77812",
            window_start=t - timedelta(days=30),
            window_end=t,
            severity=Severity.MAJOR,
            disposition=Disposition.PENDING,
            description="resistance out of tolerance on incoming sample",
        ),
    ]
