/*
 * topic_tool: create a topic through the Admin API (CreateTopics) and print
 * its partition count as seen in Metadata. Used by benches/compare.sh to
 * pre-create the benchmark topic on brokers that implement CreateTopics.
 *
 * Usage: topic_tool -b BOOTSTRAP [-p PARTITIONS] TOPIC
 * Prints "partitions: N"; exit 0 when the topic exists with N >= 1.
 * An already existing topic is not an error.
 *
 * This file is part of Shale (Apache-2.0); it only links librdkafka.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

int main(int argc, char **argv) {
        const char *bootstrap = NULL, *topic;
        int partitions        = 1, opt, i, found = -1;
        char errstr[512];
        rd_kafka_conf_t *conf;
        rd_kafka_t *rk;
        rd_kafka_NewTopic_t *nt;
        rd_kafka_queue_t *q;
        rd_kafka_event_t *ev;
        const rd_kafka_metadata_t *md;
        rd_kafka_topic_t *rkt;

        while ((opt = getopt(argc, argv, "b:p:")) != -1) {
                if (opt == 'b')
                        bootstrap = optarg;
                else if (opt == 'p')
                        partitions = atoi(optarg);
                else
                        goto usage;
        }
        if (!bootstrap || optind != argc - 1 || partitions < 1)
                goto usage;
        topic = argv[optind];

        conf = rd_kafka_conf_new();
        if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                              sizeof(errstr)) != RD_KAFKA_CONF_OK) {
                fprintf(stderr, "topic_tool: %s\n", errstr);
                return 2;
        }
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!rk) {
                fprintf(stderr, "topic_tool: %s\n", errstr);
                return 2;
        }

        nt = rd_kafka_NewTopic_new(topic, partitions, -1, errstr,
                                   sizeof(errstr));
        if (!nt) {
                fprintf(stderr, "topic_tool: %s\n", errstr);
                return 2;
        }
        q = rd_kafka_queue_new(rk);
        rd_kafka_CreateTopics(rk, &nt, 1, NULL, q);
        ev = rd_kafka_queue_poll(q, 15000);
        if (!ev) {
                fprintf(stderr, "topic_tool: CreateTopics timed out\n");
        } else if (rd_kafka_event_error(ev)) {
                fprintf(stderr, "topic_tool: CreateTopics: %s\n",
                        rd_kafka_event_error_string(ev));
        } else {
                const rd_kafka_CreateTopics_result_t *res =
                    rd_kafka_event_CreateTopics_result(ev);
                size_t cnt;
                const rd_kafka_topic_result_t **tr =
                    rd_kafka_CreateTopics_result_topics(res, &cnt);
                for (i = 0; i < (int)cnt; i++) {
                        rd_kafka_resp_err_t err = rd_kafka_topic_result_error(tr[i]);
                        if (err && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
                                fprintf(stderr, "topic_tool: create %s: %s\n",
                                        rd_kafka_topic_result_name(tr[i]),
                                        rd_kafka_err2str(err));
                }
        }
        if (ev)
                rd_kafka_event_destroy(ev);
        rd_kafka_NewTopic_destroy(nt);
        rd_kafka_queue_destroy(q);

        rkt = rd_kafka_topic_new(rk, topic, NULL);
        for (i = 0; i < 20 && found < 1; i++) {
                if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) ==
                    RD_KAFKA_RESP_ERR_NO_ERROR) {
                        if (md->topic_cnt == 1 && !md->topics[0].err)
                                found = md->topics[0].partition_cnt;
                        rd_kafka_metadata_destroy(md);
                }
                if (found < 1)
                        usleep(250 * 1000);
        }
        rd_kafka_topic_destroy(rkt);
        rd_kafka_destroy(rk);
        printf("partitions: %d\n", found);
        return found >= 1 ? 0 : 1;

usage:
        fprintf(stderr, "Usage: %s -b BOOTSTRAP [-p PARTITIONS] TOPIC\n",
                argv[0]);
        return 2;
}
