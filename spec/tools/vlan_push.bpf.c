// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* vlan_push.bpf.c - test helper: tc egress programs that give every skb an offloaded VLAN tag
 * (skb->vlan_tci/vlan_proto), as a VLAN device with tx-vlan offload does, for kernels without
 * the 8021q module. Attached by the decoding spec with `tc filter add dev D egress bpf da obj
 * vlan_push.bpf.o sec tc/...`; the tracepoint net_dev_queue then sees the tagged skb.
 *   tc/dot1q  802.1Q tag, VID 100, PCP 3 (offloaded)
 *   tc/qinq   802.1Q VID 100 PCP 3, then 802.1ad VID 200 PCP 5: the second push moves the first
 *             tag into the frame and leaves the 802.1ad one offloaded (QinQ)
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TCI(pcp, vid) (((pcp) << 13) | (vid))

SEC("tc/dot1q")
int dot1q(struct __sk_buff *skb)
{
	bpf_skb_vlan_push(skb, bpf_htons(0x8100), TCI(3, 100));
	return TC_ACT_OK;
}

SEC("tc/qinq")
int qinq(struct __sk_buff *skb)
{
	bpf_skb_vlan_push(skb, bpf_htons(0x8100), TCI(3, 100));
	bpf_skb_vlan_push(skb, bpf_htons(0x88a8), TCI(5, 200));
	return TC_ACT_OK;
}
