package io.reaseq.flink;

import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Emits every Kafka record untouched: {@code Row(key, value, partition, offset, timestamp)}.
 *
 * <p>The key and value are the record's own bytes (either may be null; nothing is decoded, so
 * non-UTF-8 payloads survive for a dead-letter topic); the timestamp is the Kafka record
 * timestamp in epoch milliseconds.
 */
public final class RawRecordDeserializer implements KafkaRecordDeserializationSchema<Row> {

    private static final long serialVersionUID = 1L;

    /** Field names of the produced rows, in order. */
    public static final String[] FIELD_NAMES = {"key", "value", "partition", "offset", "timestamp"};

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        out.collect(Row.of(record.key(), record.value(), record.partition(), record.offset(), record.timestamp()));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return producedType();
    }

    /** The produced row type: (byte[], byte[], int, long, long) with {@link #FIELD_NAMES}. */
    public static RowTypeInfo producedType() {
        return new RowTypeInfo(
                new TypeInformation<?>[] {
                    PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO,
                    PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO,
                    BasicTypeInfo.INT_TYPE_INFO,
                    BasicTypeInfo.LONG_TYPE_INFO,
                    BasicTypeInfo.LONG_TYPE_INFO,
                },
                FIELD_NAMES.clone());
    }
}
