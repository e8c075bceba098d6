package io.reaseq.flink;

import java.nio.charset.StandardCharsets;
import java.util.zip.CRC32;
import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Emits every Kafka record untouched with the shard of its user: {@code Row(shard, Row(key, value,
 * partition, offset, timestamp))}, ready for a keyBy on field 0 without a Python stage.
 *
 * <p>The shard is {@code crc32(utf8(user_id)) % shards} (as the job's Python {@code shard_of}), with
 * {@code user_id} the last top-level string field of that name in the JSON value. Anything else (no
 * value, not JSON, no such field) goes to shard 0: the Python operator validates every record and
 * turns the bad ones into dead letters. Nothing here throws on input.
 */
public final class ShardedRecordDeserializer implements KafkaRecordDeserializationSchema<Row> {

    private static final long serialVersionUID = 1L;
    private static final JsonFactory JSON = new JsonFactory();

    private final int shards;

    public ShardedRecordDeserializer(int shards) {
        if (shards < 1) {
            throw new IllegalArgumentException("shards must be >= 1, got " + shards);
        }
        this.shards = shards;
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        Row raw = Row.of(record.key(), record.value(), record.partition(), record.offset(), record.timestamp());
        out.collect(Row.of(shardOf(record.value(), shards), raw));
    }

    /** The shard of the record's user, or 0 when no user id can be read. */
    public static int shardOf(byte[] value, int shards) {
        String user = userId(value);
        if (user == null) {
            return 0;
        }
        CRC32 crc = new CRC32();
        crc.update(user.getBytes(StandardCharsets.UTF_8));
        return (int) (crc.getValue() % shards);
    }

    /** The last top-level string {@code user_id} of a JSON object, or null. */
    static String userId(byte[] value) {
        if (value == null) {
            return null;
        }
        String found = null;
        try (JsonParser parser = JSON.createParser(value)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                String name = parser.currentName();
                JsonToken token = parser.nextToken();
                if ("user_id".equals(name) && token == JsonToken.VALUE_STRING) {
                    found = parser.getText();
                } else {
                    parser.skipChildren();
                }
            }
        } catch (Exception malformed) {
            return found;
        }
        return found;
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return new RowTypeInfo(
                new TypeInformation<?>[] {BasicTypeInfo.INT_TYPE_INFO, RawRecordDeserializer.producedType()},
                new String[] {"shard", "record"});
    }
}
