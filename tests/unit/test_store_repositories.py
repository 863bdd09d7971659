"""The typed repositories: kernels, images, VMs, operations."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from banger.core.errors import Conflict, InvalidInput, NotFound, StoreError, Unavailable
from banger.images.manifest import ImageManifest
from banger.kernels.manifest import KernelFile, KernelManifest
from banger.store import (
    ImageRecord,
    KernelRecord,
    NetMode,
    OperationRecord,
    OperationState,
    Store,
    VMRecord,
    VMState,
)

NET = ipaddress.IPv4Network("172.16.0.0/24")
GATEWAY = ipaddress.IPv4Address("172.16.0.1")


@pytest.fixture
def store(tmp_path: Path):
    opened = Store.open(tmp_path / "state.db")
    yield opened
    opened.close()


def kernel(name: str = "debian-cloud", **kw) -> KernelRecord:
    return KernelRecord(name=name, version="6.1.0-28", source="apt", path=Path(f"/k/{name}"), **kw)


def image(name: str = "bookworm", kernel_name: str | None = "debian-cloud", **kw) -> ImageRecord:
    return ImageRecord(
        id=f"img-{name}",
        name=name,
        source="mmdebstrap",
        path=Path(f"/i/{name}"),
        kernel_name=kernel_name,
        **kw,
    )


def vm(name: str = "box", image_id: str | None = "img-bookworm", **kw) -> VMRecord:
    return VMRecord(
        id=f"vm-{name}",
        name=name,
        backend="qemu",
        vcpu=2,
        memory_mib=1024,
        disk_bytes=8 << 30,
        image_id=image_id,
        **kw,
    )


@pytest.fixture
def with_image(store: Store) -> ImageRecord:
    store.kernels.add(kernel())
    return store.images.add(image())


# -- kernels --------------------------------------------------------------------


KERNEL_MANIFEST = KernelManifest(
    name="debian-cloud", version="6.1.0-28", source="apt", created="2026-01-01T00:00:00+00:00",
    files=(KernelFile(name="vmlinux", sha256="ab" * 32, size=7),), modules=("virtio", "9p"),
)


def test_kernel_round_trips_every_field(store: Store) -> None:
    added = store.kernels.add(kernel(manifest=KERNEL_MANIFEST))
    assert added.path == Path("/k/debian-cloud")
    assert added.manifest == KERNEL_MANIFEST
    assert added.created_at is not None and added.created_at.tzinfo is not None
    assert store.kernels.get("debian-cloud") == added
    assert store.kernels.list() == [added]


def test_kernel_with_a_taken_name_is_a_conflict(store: Store) -> None:
    store.kernels.add(kernel())
    with pytest.raises(Conflict, match="kernel 'debian-cloud' already exists") as err:
        store.kernels.add(kernel(is_default=True))
    assert "banger kernel delete debian-cloud" in (err.value.hint or "")


def test_missing_kernel_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="kernel 'nope' not found"):
        store.kernels.get("nope")
    with pytest.raises(NotFound):
        store.kernels.delete("nope")
    assert store.kernels.find("nope") is None


def test_only_one_default_kernel_and_set_default_moves_it(store: Store) -> None:
    store.kernels.add(kernel("a", is_default=True))
    with pytest.raises(Conflict, match="kernel 'a' is already the default"):
        store.kernels.add(kernel("b", is_default=True))
    store.kernels.add(kernel("b"))
    assert store.kernels.set_default("b").is_default
    assert store.kernels.get_default() == store.kernels.get("b")
    assert not store.kernels.get("a").is_default


def test_kernel_used_by_an_image_cannot_be_deleted(store: Store, with_image: ImageRecord) -> None:
    with pytest.raises(Conflict, match="kernel 'debian-cloud' is in use by image 'bookworm'"):
        store.kernels.delete("debian-cloud")
    store.images.delete("bookworm")
    store.kernels.delete("debian-cloud")
    assert store.kernels.list() == []


def test_kernel_used_by_a_vm_cannot_be_deleted(store: Store) -> None:
    store.kernels.add(kernel())
    store.vms.add(vm(image_id=None, kernel_name="debian-cloud"))
    with pytest.raises(Conflict, match="in use by VM 'box'"):
        store.kernels.delete("debian-cloud")


# -- images ---------------------------------------------------------------------


def test_image_is_found_by_id_and_by_name(store: Store, with_image: ImageRecord) -> None:
    assert store.images.get("img-bookworm") == with_image
    assert store.images.get("bookworm") == with_image
    assert with_image.kernel_name == "debian-cloud" and with_image.size_bytes == 0
    with pytest.raises(NotFound, match="image 'nope' not found"):
        store.images.get("nope")


def test_image_with_a_taken_name_is_a_conflict(store: Store, with_image: ImageRecord) -> None:
    with pytest.raises(Conflict, match="image 'bookworm' already exists"):
        store.images.add(ImageRecord(id="other", name="bookworm", source="x", path=Path("/x")))


def test_image_of_an_unknown_kernel_is_refused(store: Store) -> None:
    with pytest.raises(NotFound, match="kernel 'ghost' not found"):
        store.images.add(image(kernel_name="ghost"))
    assert store.images.list() == []


def test_image_without_kernel_means_default_kernel(store: Store) -> None:
    assert store.images.add(image("oci", kernel_name=None)).kernel_name is None


def test_only_one_default_image_and_promote_moves_it(store: Store) -> None:
    store.images.add(image("a", kernel_name=None, is_default=True))
    with pytest.raises(Conflict, match="image 'a' is already the default"):
        store.images.add(image("b", kernel_name=None, is_default=True))
    store.images.add(image("b", kernel_name=None))
    store.images.set_default("b")
    assert store.images.get_default() == store.images.get("b")
    assert [i.name for i in store.images.list() if i.is_default] == ["b"]


def test_image_used_by_vms_cannot_be_deleted(store: Store, with_image: ImageRecord) -> None:
    store.vms.add(vm("one"))
    store.vms.add(vm("two"))
    assert store.images.in_use_by_vms(with_image.id) == ["one", "two"]
    with pytest.raises(Conflict, match="image 'bookworm' is in use by VM 'one', 'two'") as err:
        store.images.delete("bookworm")
    assert "banger vm delete one two" in (err.value.hint or "")
    store.vms.delete("vm-one")
    store.vms.delete("vm-two")
    assert store.images.delete("bookworm").id == "img-bookworm"
    assert store.images.list() == []


# -- VMs ------------------------------------------------------------------------


def test_vm_round_trips_every_field(store: Store, with_image: ImageRecord) -> None:
    started = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    added = store.vms.add(
        vm(
            kernel_name="debian-cloud",
            net_mode=NetMode.USER,
            ssh_port=2222,
            mac="52:54:00:00:00:01",
            tap_name="bgr-tap0",
            pid=4242,
            spec={"packages": ["git"], "cmd": None},
            started_at=started,
        )
    )
    assert store.vms.get("box") == added == store.vms.get("vm-box")
    assert added.state is VMState.CREATING and added.net_mode is NetMode.USER
    assert added.spec == {"packages": ["git"], "cmd": None}
    assert added.started_at == started
    assert added.created_at == added.updated_at == added.state_changed_at


def test_vm_with_a_taken_name_is_a_conflict(store: Store, with_image: ImageRecord) -> None:
    store.vms.add(vm())
    with pytest.raises(Conflict) as err:
        store.vms.add(
            VMRecord(id="vm-2", name="box", backend="qemu", vcpu=1, memory_mib=1, disk_bytes=1)
        )
    assert err.value.message == "VM 'box' already exists"
    assert "banger vm delete box" in (err.value.hint or "")


def test_renaming_a_vm_onto_a_taken_name_is_a_conflict(
    store: Store, with_image: ImageRecord
) -> None:
    store.vms.add(vm("one"))
    store.vms.add(vm("two"))
    with pytest.raises(Conflict, match="VM 'one' already exists"):
        store.vms.update("vm-two", name="one")
    assert store.vms.get("vm-two").name == "two"


def test_vm_of_an_unknown_image_is_refused(store: Store) -> None:
    with pytest.raises(NotFound, match="image 'img-bookworm' not found"):
        store.vms.add(vm())


def test_vm_values_outside_the_schema_are_invalid_input(
    store: Store, with_image: ImageRecord
) -> None:
    with pytest.raises(InvalidInput):
        store.vms.add(
            VMRecord(id="v", name="v", backend="qemu", vcpu=0, memory_mib=1, disk_bytes=1)
        )
    with pytest.raises(ValueError):
        store.vms.add(vm(state="flying"))


def test_vm_update_changes_fields_and_bumps_updated_at(
    store: Store, with_image: ImageRecord
) -> None:
    added = store.vms.add(vm())
    updated = store.vms.update(added.id, pid=99, spec={"a": 1})
    assert (updated.state, updated.pid, updated.spec) == (VMState.CREATING, 99, {"a": 1})
    assert updated.updated_at is not None and added.updated_at is not None
    assert updated.updated_at > added.updated_at
    assert updated.created_at == added.created_at
    with pytest.raises(TypeError):
        store.vms.update(added.id, created_at=datetime.now(UTC))
    with pytest.raises(TypeError):
        store.vms.update(added.id, colour="red")
    with pytest.raises(NotFound):
        store.vms.update("vm-ghost", pid=1)


def test_vm_update_never_changes_the_state(store: Store, with_image: ImageRecord) -> None:
    added = store.vms.add(vm(state=VMState.STOPPED))
    for field in ("state", "state_reason", "state_changed_at"):
        with pytest.raises(TypeError, match="transition"):
            store.vms.update(added.id, **{field: getattr(added, field)})
    assert store.vms.get_key(added.id) == added


def test_vm_transition_is_compare_and_set(store: Store, with_image: ImageRecord) -> None:
    seen = store.vms.add(vm(state=VMState.STOPPED))
    store.vms.transition(seen, VMState.STARTING, reason="start requested")
    with pytest.raises(Conflict, match="VM 'box' is starting, not stopped"):
        store.vms.transition(seen, VMState.STARTING, reason="a second start")


def test_vm_list_filters_by_state_in_creation_order(store: Store, with_image: ImageRecord) -> None:
    store.vms.add(vm("b", state=VMState.RUNNING))
    store.vms.add(vm("a"))
    store.vms.add(vm("c", state=VMState.RUNNING))
    assert [v.name for v in store.vms.list()] == ["b", "a", "c"]
    assert [v.name for v in store.vms.list(state="running")] == ["b", "c"]


def test_vm_delete_is_not_found_unless_missing_ok(store: Store, with_image: ImageRecord) -> None:
    store.vms.add(vm())
    store.vms.delete("vm-box")
    with pytest.raises(NotFound):
        store.vms.delete("vm-box")
    store.vms.delete("vm-box", missing_ok=True)


# -- guest IPs ------------------------------------------------------------------


def test_guest_ips_are_allocated_lowest_first_skipping_reserved(
    store: Store, with_image: ImageRecord
) -> None:
    for name in ("a", "b", "c"):
        store.vms.add(vm(name))
    assert store.vms.allocate_guest_ip("vm-a", NET, {GATEWAY}) == "172.16.0.2"
    assert store.vms.allocate_guest_ip("vm-b", NET, {"172.16.0.3", GATEWAY}) == "172.16.0.4"
    assert store.vms.allocate_guest_ip("vm-a", NET, {GATEWAY}) == "172.16.0.2"  # keeps its own
    store.vms.delete("vm-a")  # deleting releases the address
    assert store.vms.allocate_guest_ip("vm-c", NET, {GATEWAY}) == "172.16.0.2"
    assert {v.guest_ip for v in store.vms.list() if v.guest_ip} == {"172.16.0.2", "172.16.0.4"}


def test_guest_ip_pool_exhaustion_is_unavailable(store: Store, with_image: ImageRecord) -> None:
    tiny = ipaddress.IPv4Network("10.0.0.0/30")  # hosts .1 and .2
    for name in ("a", "b"):
        store.vms.add(vm(name))
    assert store.vms.allocate_guest_ip("vm-a", tiny, {"10.0.0.1"}) == "10.0.0.2"
    with pytest.raises(Unavailable, match="no free guest IP left in 10.0.0.0/30"):
        store.vms.allocate_guest_ip("vm-b", tiny, {"10.0.0.1"})


def test_a_chosen_guest_ip_that_is_taken_is_a_conflict(
    store: Store, with_image: ImageRecord
) -> None:
    store.vms.add(vm("a", guest_ip="172.16.0.9"))
    with pytest.raises(Conflict, match="guest IP 172.16.0.9 is already used"):
        store.vms.add(vm("b", guest_ip="172.16.0.9"))


def test_guest_ips_stay_unique_when_16_threads_allocate_at_once(
    store: Store, with_image: ImageRecord
) -> None:
    for n in range(16):
        store.vms.add(vm(f"vm{n}"))
    got: dict[str, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def allocate(n: int) -> None:
        barrier.wait()
        try:
            got[f"vm{n}"] = store.vms.allocate_guest_ip(f"vm-vm{n}", NET, {GATEWAY})
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=allocate, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(got.values(), key=ipaddress.IPv4Address) == [
        f"172.16.0.{n}" for n in range(2, 18)
    ]
    assert {v.name: v.guest_ip for v in store.vms.list()} == got


# -- operations -----------------------------------------------------------------


def test_operation_round_trips_and_finishing_stamps_finished_at(store: Store) -> None:
    op = store.operations.add(OperationRecord(id="op1", kind="vm.create", target="box"))
    assert op.state is OperationState.PENDING and op.stages == [] and op.finished_at is None
    stages = [{"name": "reserve", "state": "done", "seconds": 0.01}]
    running = store.operations.update("op1", state="running", stages=stages)
    assert running.stages == stages and running.finished_at is None
    done = store.operations.update("op1", state=OperationState.SUCCEEDED, result={"ip": "x"})
    assert done.result == {"ip": "x"} and done.finished_at is not None
    assert store.operations.list(kind="vm.create") == [done]
    with pytest.raises(NotFound, match="operation 'ghost' not found"):
        store.operations.update("ghost", state="running")


def test_mark_interrupted_fails_only_unfinished_operations(store: Store) -> None:
    store.operations.add(OperationRecord(id="p", kind="k"))
    store.operations.add(OperationRecord(id="r", kind="k", state=OperationState.RUNNING))
    store.operations.add(OperationRecord(id="s", kind="k", state=OperationState.SUCCEEDED))
    assert store.operations.mark_interrupted() == 2
    for op_id in ("p", "r"):
        op = store.operations.get(op_id)
        assert op.state is OperationState.FAILED and op.finished_at is not None
        assert op.error is not None and op.error["message"] == "interrupted by a daemon restart"
    assert store.operations.get("s").error is None
    assert store.operations.mark_interrupted() == 0


def test_delete_finished_before_prunes_only_old_finished_operations(store: Store) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    store.operations.add(
        OperationRecord(id="old", kind="k", state=OperationState.FAILED, finished_at=old)
    )
    store.operations.add(OperationRecord(id="new", kind="k"))
    store.operations.update("new", state="cancelled")
    store.operations.add(OperationRecord(id="live", kind="k", state=OperationState.RUNNING))
    assert store.operations.delete_finished_before(datetime.now(UTC) - timedelta(hours=1)) == 1
    assert {o.id for o in store.operations.list()} == {"new", "live"}


def test_naive_timestamps_are_refused(store: Store) -> None:
    with pytest.raises(TypeError, match="naive"):
        store.operations.delete_finished_before(datetime.now())


def test_refs_are_exact_and_a_ref_both_id_and_name_is_refused(
    store: Store, with_image: ImageRecord
) -> None:
    first = store.vms.add(vm("first"))
    # A row an older banger could write: named exactly like another VM's id.
    store.vms.add(dataclasses.replace(vm(first.id), id="feedfacecafe"))
    with pytest.raises(Conflict, match="ambiguous") as err:
        store.vms.get(first.id)
    assert "'first' (by name) or 'feedfacecafe' (by id)" in (err.value.hint or "")
    assert store.vms.get("first").id == first.id
    assert store.vms.get("feedfacecafe").name == first.id
    assert store.vms.get_key(first.id).name == "first"  # internal callers hold ids
    assert store.vms.find(first.id[:4]) is None  # never by prefix


def test_a_row_without_a_manifest_reads_back_as_none(store: Store) -> None:
    assert store.kernels.add(kernel()).manifest is None


@pytest.mark.parametrize(
    "damage",
    [
        "{\"id\": \"x\"}",  # fields missing
        json.dumps({"id": "x", "name": "n", "source": "s", "kernel_name": None,
                    "init": "/sbin/init rw single"}),  # would add kernel arguments
        json.dumps({"id": "x", "name": "n", "source": "s", "kernel_name": None,
                    "rootfs_bytes": -1}),
    ],
)
def test_a_damaged_manifest_in_the_database_is_one_store_error_naming_the_column(
    store: Store, with_image: ImageRecord, damage: str
) -> None:
    store.connection().execute("UPDATE images SET manifest = ?", (damage,))
    with pytest.raises(StoreError, match=r"damaged images\.manifest") as err:
        store.images.get(with_image.name)
    assert "\n" not in err.value.message and err.value.hint


def test_an_image_manifest_round_trips_through_the_store(store: Store) -> None:
    store.kernels.add(kernel())
    manifest = ImageManifest(
        id="img-bookworm", name="bookworm", source="mmdebstrap", kernel_name="debian-cloud",
        packages=("git",), rootfs_bytes=10,
    )
    assert store.images.add(image(manifest=manifest)).manifest == manifest
