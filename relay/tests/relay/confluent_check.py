"""The third-party view of the topic, with confluent-kafka (librdkafka).

consume BROKER TOPIC          every record of every partition, from the beginning,
                              one JSON line each: partition, offset, key, headers
partition BROKER TOPIC KEY..  produces each key with librdkafka's murmur2_random
                              partitioner (Java's default) and prints the partition
"""

import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


def consume(broker, topic):
    consumer = Consumer({
        "bootstrap.servers": broker,
        "group.id": f"audit-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    })
    partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    at_end = set()
    deadline = time.monotonic() + 30
    while len(at_end) < len(partitions):
        if time.monotonic() > deadline:
            sys.exit(f"timed out; at end: {sorted(at_end)} of {partitions}")
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
                continue
            sys.exit(str(message.error()))
        at_end.discard(message.partition())
        print(json.dumps({
            "partition": message.partition(),
            "offset": message.offset(),
            "key": message.key().decode(),
            "headers": {k: v.decode() for k, v in (message.headers() or [])},
        }))
    consumer.close()


def partition(broker, topic, keys):
    producer = Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random"})
    chosen = {}

    def delivered(error, message):
        if error is not None:
            sys.exit(str(error))
        chosen[message.key().decode()] = message.partition()

    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"probe", on_delivery=delivered)
    if producer.flush(30) != 0:
        sys.exit("not every probe was delivered")
    for key in keys:
        print(json.dumps({"key": key, "partition": chosen[key]}))


if __name__ == "__main__":
    command, broker, topic, *rest = sys.argv[1:]
    if command == "consume":
        consume(broker, topic)
    elif command == "partition":
        partition(broker, topic, rest)
    else:
        sys.exit(f"unknown command {command}")
