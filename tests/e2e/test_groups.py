"""Consumer groups through the gateway, with a rebalance: two members split the
partitions, one leaves, the other takes over; every record is consumed exactly
once across the group (each member commits before it reports a record).
Classic protocol and KIP-848 (group.protocol=consumer); Java and librdkafka."""
import pytest

from harness import (JavaProc, RdGroupMember, java, java_produce, rd_admin, rd_create_topic,
                     rd_produce, wait_until)
from records import assert_same_records, check_consume_order, rec_from_json

PARTITIONS = 4


class JavaMember:
    def __init__(self, bootstrap, topic, group, protocol, name):
        self.name = name
        self.p = JavaProc("consume", "--bootstrap", bootstrap, "--topic", topic, "--group", group,
                          "--group-protocol", protocol, "--follow", "--client-id", f"e2e-{name}",
                          "--timeout-ms", 150000, timeout=170)

    def assignment(self):
        return self.p.assignment()

    def count(self):
        return self.p.count()

    def snapshot(self):
        return self.p.records()

    def alive(self):
        return self.p.proc.poll() is None

    def stop(self, timeout=40):
        self.p.quit()
        rc = self.p.wait(timeout)
        assert rc == 0, f"java member {self.name} exited {rc}:\n{self.p.stderr()}"

    def kill(self):
        self.p.kill()

    def describe(self):
        return f"java member {self.name}: assignment={self.assignment()} count={self.count()}\n{self.p.stderr()[-2000:]}"


class RdMember:
    def __init__(self, bootstrap, topic, group, protocol, name):
        self.name = name
        self.m = RdGroupMember(bootstrap, topic, group, protocol, name)

    def assignment(self):
        return self.m.assignment()

    def count(self):
        return self.m.count()

    def snapshot(self):
        return self.m.snapshot()

    def alive(self):
        return not self.m.closed.is_set()

    def stop(self, timeout=40):
        self.m.stop(timeout)

    def kill(self):
        self.m._stop.set()

    def describe(self):
        return f"rdkafka member {self.name}: assignment={self.assignment()} count={self.count()} error={self.m.error!r}"


def produce(client, bootstrap, topic, count, seed):
    if client == "java":
        return [rec_from_json(o) for o in java_produce(bootstrap, topic, count, seed=seed, size=64,
                                                         idempotent=True)]
    return rd_produce(bootstrap, topic, count, seed=seed, size=64, idempotent=True)


def committed_offsets(bootstrap, topic, group):
    from confluent_kafka import Consumer, TopicPartition
    from harness import rd_common
    c = Consumer({**rd_common(bootstrap), "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=15)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
@pytest.mark.parametrize("client", ["java", "rdkafka"])
def test_group_rebalance(bootstrap, topic_name, client, protocol):
    group = f"g-{topic_name}"
    rd_create_topic(bootstrap, topic_name, PARTITIONS)
    Member = JavaMember if client == "java" else RdMember
    all_parts = set(range(PARTITIONS))
    members = []
    try:
        a = Member(bootstrap, topic_name, group, protocol, "a")
        members.append(a)
        wait_until(lambda: a.assignment() == all_parts or not a.alive(), 60,
                   "member a to own every partition")
        assert a.alive(), a.describe()

        b = Member(bootstrap, topic_name, group, protocol, "b")
        members.append(b)

        def split():
            sa, sb = a.assignment() or set(), b.assignment() or set()
            return sa and sb and not (sa & sb) and (sa | sb) == all_parts
        try:
            wait_until(split, 60, "the two members to split the partitions")
        except AssertionError:
            raise AssertionError("no split:\n" + a.describe() + "\n" + b.describe())

        first = produce(client, bootstrap, topic_name, 120, seed=1)
        assert {r.p for r in first} == all_parts, "first batch should reach every partition"
        wait_until(lambda: a.count() + b.count() >= len(first), 60, "the group to consume the first batch")
        assert a.count() > 0 and b.count() > 0, "both members should have consumed part of the first batch"

        b.stop()
        members.remove(b)
        wait_until(lambda: a.assignment() == all_parts, 60, "member a to take over every partition")

        second = produce(client, bootstrap, topic_name, 120, seed=2)
        wait_until(lambda: a.count() + b.count() >= len(first) + len(second), 60,
                   "the group to consume the second batch")
        a.stop()
        members.remove(a)

        got_a, got_b = a.snapshot(), b.snapshot()
        check_consume_order(got_a, "member a")
        check_consume_order(got_b, "member b")
        assert_same_records(first + second, got_a + got_b, f"{client} {protocol} group")

        # the group's committed offsets are the end of every partition
        ends = {}
        for r in first + second:
            ends[r.p] = max(ends.get(r.p, 0), r.o + 1)
        assert committed_offsets(bootstrap, topic_name, group) == ends
    finally:
        for m in members:
            m.kill()


def test_group_coordinator_description(bootstrap, topic_name, gateway):
    """Describing a group (FindCoordinator + DescribeGroups / ConsumerGroupDescribe)
    names the coordinator at the gateway's address."""
    group = f"g-{topic_name}"
    rd_create_topic(bootstrap, topic_name, 1)
    rd_produce(bootstrap, topic_name, 5)
    from harness import java_consume
    java_consume(bootstrap, topic_name, 5, group=group, group_protocol="consumer")
    _, objs, _ = java("admin", "describe-group", "--bootstrap", bootstrap, "--group", group)
    g = objs[0]
    assert g["type"].lower() == "consumer", g
    c = g["coordinator"]
    assert (c["host"], c["port"]) == gateway.broker_addr(c["id"]), g
    # librdkafka
    from confluent_kafka import ConsumerGroupTopicPartitions  # noqa: F401  (API present)
    admin = rd_admin(bootstrap)  # keep a reference: futures die with their AdminClient
    fs = admin.describe_consumer_groups([group], request_timeout=20)
    d = fs[group].result(30)
    assert (d.coordinator.host, d.coordinator.port) == gateway.broker_addr(d.coordinator.id), d
