"""Admin operations and broker addresses as clients see them through the gateway."""
import json

from harness import java, rd_admin, rd_create_topic, wait_until


def real_ports(gateway):
    k = gateway.kafka
    return {k.client_port(n) for n in range(1, k.brokers + 1)} | {
        k.client_port(n) + 100 for n in range(1, k.brokers + 1)}


def check_node(gateway, node, what):
    """A node a client was told about sits at the gateway's address for its id."""
    assert node is not None, f"{what}: no node"
    addr = (node["host"], node["port"])
    assert addr == gateway.broker_addr(node["id"]), (
        f"{what}: node {node['id']} advertised at {addr}, want {gateway.broker_addr(node['id'])}")
    if not gateway.direct:
        assert node["port"] not in real_ports(gateway), f"{what}: real broker port leaked: {node}"


def test_java_admin_topic_lifecycle(bootstrap, topic_name, gateway):
    _, objs, _ = java("admin", "create-topic", "--bootstrap", bootstrap, "--topic", topic_name,
                      "--partitions", 3, "--replication-factor", 1, "--config", "retention.ms=3600000")
    created = objs[0]
    assert created["name"] == topic_name and len(created["partitions"]) == 3
    _, objs, _ = java("admin", "describe-topic", "--bootstrap", bootstrap, "--topic", topic_name)
    d = objs[0]
    assert [p["partition"] for p in d["partitions"]] == [0, 1, 2]
    for p in d["partitions"]:
        assert len(p["replicas"]) == 1 and p["isr"] == p["replicas"]
        check_node(gateway, p["leader"], f"describe-topic partition {p['partition']} leader")
    _, objs, _ = java("admin", "describe-config", "--bootstrap", bootstrap, "--topic", topic_name)
    assert objs[0]["config"]["retention.ms"] == "3600000"
    _, objs, _ = java("admin", "list-topics", "--bootstrap", bootstrap)
    assert topic_name in objs[0]["topics"]
    java("admin", "delete-topic", "--bootstrap", bootstrap, "--topic", topic_name)
    _, objs, _ = java("admin", "list-topics", "--bootstrap", bootstrap)
    assert topic_name not in objs[0]["topics"]


def test_rdkafka_admin_topic_lifecycle(bootstrap, topic_name, gateway):
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import ConfigResource, ResourceType
    admin = rd_admin(bootstrap)
    rd_create_topic(bootstrap, topic_name, 2, config={"cleanup.policy": "compact"})
    d = admin.describe_topics(TopicCollection([topic_name]), request_timeout=20)[topic_name].result(30)
    assert d.name == topic_name and len(d.partitions) == 2
    for p in d.partitions:
        assert p.leader is not None
        assert (p.leader.host, p.leader.port) == gateway.broker_addr(p.leader.id), p
        assert [r.id for r in p.isr] == [r.id for r in p.replicas]
    res = ConfigResource(ResourceType.TOPIC, topic_name)
    cfg = admin.describe_configs([res], request_timeout=20)[res].result(30)
    assert cfg["cleanup.policy"].value == "compact"
    assert topic_name in admin.list_topics(timeout=10).topics
    admin.delete_topics([topic_name], operation_timeout=20, request_timeout=20)[topic_name].result(30)
    wait_until(lambda: topic_name not in admin.list_topics(timeout=10).topics, 30, "topic to disappear")


def test_java_metadata_advertises_gateway(bootstrap, topic_name, gateway):
    rd_create_topic(bootstrap, topic_name, 2)
    rc, objs, _ = java("metadata", "--bootstrap", bootstrap, "--topic", topic_name)
    md = objs[0]
    assert [b["id"] for b in md["brokers"]] == list(range(1, gateway.kafka.brokers + 1))
    for b in md["brokers"]:
        check_node(gateway, b, "DescribeCluster broker")
    if md["controller"] is not None and md["controller"]["id"] >= 0:
        check_node(gateway, md["controller"], "DescribeCluster controller")
    assert len(md["partitions"]) == 2
    for p in md["partitions"]:
        check_node(gateway, p["leader"], "Metadata leader")
        for r in p["replicas"]:
            check_node(gateway, r, "Metadata replica")
    if not gateway.direct:
        text = json.dumps(md)
        for port in real_ports(gateway):
            assert f'"port": {port}' not in text and f'"port":{port}' not in text, text


def test_rdkafka_metadata_advertises_gateway(bootstrap, topic_name, gateway):
    rd_create_topic(bootstrap, topic_name, 2)
    md = rd_admin(bootstrap).list_topics(topic_name, timeout=10)
    assert sorted(md.brokers) == list(range(1, gateway.kafka.brokers + 1))
    for b in md.brokers.values():
        assert (b.host, b.port) == gateway.broker_addr(b.id), b
    t = md.topics[topic_name]
    assert sorted(t.partitions) == [0, 1]
    for p in t.partitions.values():
        assert p.leader in md.brokers
    if md.controller_id >= 0:
        assert md.controller_id in md.brokers
    # librdkafka's DescribeCluster
    admin = rd_admin(bootstrap)
    c = admin.describe_cluster(request_timeout=20).result(30)
    for n in c.nodes:
        assert (n.host, n.port) == gateway.broker_addr(n.id), n
    if c.controller is not None:
        assert (c.controller.host, c.controller.port) == gateway.broker_addr(c.controller.id)
