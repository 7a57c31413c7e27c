/*
 * kafka_topics_shim: the subset of Apache Kafka's bin/kafka-topics.sh that
 * librdkafka's test suite calls through test_kafka_topics() (KAFKA_PATH),
 * implemented with librdkafka's Admin API so no JVM/Kafka install is needed:
 *
 *   --bootstrap-server B --create --topic T [--partitions N]
 *       [--replication-factor R] [--config k=v]...      CreateTopics
 *   --bootstrap-server B --alter --topic T --partitions N  CreatePartitions
 *   --bootstrap-server B --delete --topic T               DeleteTopics
 *
 * Exit status 0 on success, 1 on a broker error, 2 on usage errors.
 * Part of Shale's compatibility harness (Apache-2.0); links librdkafka only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#define MAX_CONFIGS 64

static int check(rd_kafka_event_t *ev, const char *what) {
        const rd_kafka_topic_result_t **tr = NULL;
        size_t cnt = 0, i;
        int rc     = 0;

        if (!ev) {
                fprintf(stderr, "kafka-topics shim: %s timed out\n", what);
                return 1;
        }
        if (rd_kafka_event_error(ev)) {
                fprintf(stderr, "kafka-topics shim: %s: %s\n", what,
                        rd_kafka_event_error_string(ev));
                rd_kafka_event_destroy(ev);
                return 1;
        }
        switch (rd_kafka_event_type(ev)) {
        case RD_KAFKA_EVENT_CREATETOPICS_RESULT:
                tr = rd_kafka_CreateTopics_result_topics(
                    rd_kafka_event_CreateTopics_result(ev), &cnt);
                break;
        case RD_KAFKA_EVENT_CREATEPARTITIONS_RESULT:
                tr = rd_kafka_CreatePartitions_result_topics(
                    rd_kafka_event_CreatePartitions_result(ev), &cnt);
                break;
        case RD_KAFKA_EVENT_DELETETOPICS_RESULT:
                tr = rd_kafka_DeleteTopics_result_topics(
                    rd_kafka_event_DeleteTopics_result(ev), &cnt);
                break;
        default:
                break;
        }
        for (i = 0; i < cnt; i++) {
                if (rd_kafka_topic_result_error(tr[i])) {
                        fprintf(stderr, "kafka-topics shim: %s %s: %s\n", what,
                                rd_kafka_topic_result_name(tr[i]),
                                rd_kafka_topic_result_error_string(tr[i]));
                        rc = 1;
                }
        }
        rd_kafka_event_destroy(ev);
        return rc;
}

int main(int argc, char **argv) {
        const char *bootstrap = NULL, *topic = NULL, *action = NULL;
        const char *configs[MAX_CONFIGS];
        int config_cnt = 0, partitions = -1, rf = -1, i, rc;
        char errstr[512];
        rd_kafka_conf_t *conf;
        rd_kafka_t *rk;
        rd_kafka_queue_t *q;
        rd_kafka_AdminOptions_t *opts;

        for (i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (!strcmp(a, "--create") || !strcmp(a, "--alter") ||
                    !strcmp(a, "--delete"))
                        action = a + 2;
                else if (!strcmp(a, "--bootstrap-server") && v)
                        bootstrap = argv[++i];
                else if (!strcmp(a, "--topic") && v)
                        topic = argv[++i];
                else if (!strcmp(a, "--partitions") && v)
                        partitions = atoi(argv[++i]);
                else if (!strcmp(a, "--replication-factor") && v)
                        rf = atoi(argv[++i]);
                else if (!strcmp(a, "--config") && v &&
                         config_cnt < MAX_CONFIGS)
                        configs[config_cnt++] = argv[++i];
                else {
                        fprintf(stderr, "kafka-topics shim: unsupported "
                                        "argument %s\n", a);
                        return 2;
                }
        }
        if (!bootstrap || !topic || !action) {
                fprintf(stderr, "kafka-topics shim: need --bootstrap-server, "
                                "--topic and one of --create/--alter/"
                                "--delete\n");
                return 2;
        }

        conf = rd_kafka_conf_new();
        if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                              sizeof(errstr)) != RD_KAFKA_CONF_OK ||
            !(rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr,
                                sizeof(errstr)))) {
                fprintf(stderr, "kafka-topics shim: %s\n", errstr);
                return 2;
        }
        q    = rd_kafka_queue_new(rk);
        opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_ANY);
        rd_kafka_AdminOptions_set_operation_timeout(opts, 10000, errstr,
                                                    sizeof(errstr));
        rd_kafka_AdminOptions_set_request_timeout(opts, 20000, errstr,
                                                  sizeof(errstr));

        if (!strcmp(action, "create")) {
                rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(
                    topic, partitions, rf, errstr, sizeof(errstr));
                if (!nt) {
                        fprintf(stderr, "kafka-topics shim: %s\n", errstr);
                        return 2;
                }
                for (i = 0; i < config_cnt; i++) {
                        char kv[512], *eq;
                        snprintf(kv, sizeof(kv), "%s", configs[i]);
                        if (!(eq = strchr(kv, '='))) {
                                fprintf(stderr, "kafka-topics shim: bad "
                                                "--config %s\n", kv);
                                return 2;
                        }
                        *eq = '\0';
                        rd_kafka_NewTopic_set_config(nt, kv, eq + 1);
                }
                rd_kafka_CreateTopics(rk, &nt, 1, opts, q);
                rc = check(rd_kafka_queue_poll(q, 30000), "CreateTopics");
                rd_kafka_NewTopic_destroy(nt);
        } else if (!strcmp(action, "alter")) {
                rd_kafka_NewPartitions_t *np;
                if (partitions < 1) {
                        fprintf(stderr, "kafka-topics shim: --alter needs "
                                        "--partitions\n");
                        return 2;
                }
                np = rd_kafka_NewPartitions_new(topic, (size_t)partitions,
                                                errstr, sizeof(errstr));
                rd_kafka_CreatePartitions(rk, &np, 1, opts, q);
                rc = check(rd_kafka_queue_poll(q, 30000), "CreatePartitions");
                rd_kafka_NewPartitions_destroy(np);
        } else {
                rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(topic);
                rd_kafka_DeleteTopics(rk, &dt, 1, opts, q);
                rc = check(rd_kafka_queue_poll(q, 30000), "DeleteTopics");
                rd_kafka_DeleteTopic_destroy(dt);
        }

        rd_kafka_AdminOptions_destroy(opts);
        rd_kafka_queue_destroy(q);
        rd_kafka_destroy(rk);
        return rc;
}
