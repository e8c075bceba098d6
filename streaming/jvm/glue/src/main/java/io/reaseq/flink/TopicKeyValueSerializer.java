package io.reaseq.flink;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.flink.types.Row;

/**
 * Writes {@code Row(topic, key, value)} as a Kafka record to that topic with that key and value.
 *
 * <p>One sink can thus write several topics. The key and value are raw bytes (a null key lets
 * the producer pick the partition; a null value is a tombstone on a compacted topic). The
 * partition follows from the key (the producer's default partitioner) and the timestamp is left
 * to the producer (the send time).
 */
public final class TopicKeyValueSerializer implements KafkaRecordSerializationSchema<Row> {

    private static final long serialVersionUID = 1L;

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Row element, KafkaSinkContext context, Long timestamp) {
        Object topic = element.getField(0);
        if (!(topic instanceof String) || ((String) topic).isEmpty()) {
            throw new IllegalArgumentException("Row(topic, key, value) needs a non-empty topic, got: " + element);
        }
        return new ProducerRecord<>((String) topic, null, (byte[]) element.getField(1), (byte[]) element.getField(2));
    }
}
