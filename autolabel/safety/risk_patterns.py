"""The pattern tables behind :mod:`autolabel.safety.risk`: data, kept apart from the code that applies them.

Every entry has an id, a language and a regular expression (risk patterns also a category). Ids read
``<language>.<category>.<name>``, ``<language>.idiom.<name>`` and ``inj.<language>.<name>``; they are what
a stored hit points at, so keep them stable.

How the expressions are applied is described in :mod:`autolabel.safety.risk`. In short:

* risk patterns and idioms run on *folded* text: every run of whitespace is one space (English) or removed
  (Chinese), curly quotes are straight quotes, and everything is lower case — so write them in lower case (a test
  checks); English expressions match only as if wrapped in ``\\b(?:...)\\b``, so write them starting and ending
  with a word character; Chinese expressions are made of Han characters only (a text without any skips the
  Chinese table; a test checks);
* injection patterns run on the original text with ``re.IGNORECASE | re.MULTILINE``; every literal space in
  them stands for ``\\s+``, so write no literal space inside a character class or a lookbehind.

To add a pattern, add a row and tests in ``tests/test_risk.py``: one where it fires, one ordinary sentence
near it where it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

Language = Literal["en", "zh"]


class RiskCategory(str, Enum):
    """What kind of risk a hit points at."""

    SELF_HARM = "self_harm"
    SUICIDE = "suicide"
    HARM_TO_OTHERS = "harm_to_others"
    ABUSE = "abuse"


@dataclass(frozen=True)
class RiskPattern:
    """One auditable row of the risk table."""

    id: str
    category: RiskCategory
    language: Language
    regex: str


@dataclass(frozen=True)
class Idiom:
    """A phrase that looks like risk language but is not; a risk hit overlapping it is dropped."""

    id: str
    language: Language
    regex: str


@dataclass(frozen=True)
class InjectionPattern:
    """One row of the prompt-injection table (``language`` ``"any"`` runs on every text)."""

    id: str
    language: Literal["en", "zh", "any"]
    regex: str


S, SH, HO, AB = RiskCategory.SUICIDE, RiskCategory.SELF_HARM, RiskCategory.HARM_TO_OTHERS, RiskCategory.ABUSE

# People a client may name as the one who hurts them, or the one they might hurt.
_PEOPLE = (
    r"husband|wife|partner|boyfriend|girlfriend|ex|fianc[eé]e?|dad|father|stepdad|stepfather|mom|mum|mother"
    r"|stepmom|stepmother|brother|sister|uncle|aunt|grandpa|grandfather|grandma|grandmother|cousin|son"
    r"|daughter|kids?|child|children|baby|boss|teacher|coach|roommate|neighbou?r|friend"
)
_SUBJ = rf"(?:he|she|they|(?:my|our|his|her) (?:{_PEOPLE}))"
_OBJ = (
    rf"(?:him|her|them|you|someone|somebody|anyone|anybody|everyone|everybody|people"
    rf"|(?:my|his|her|our|the|that) (?:{_PEOPLE}))"
)
_SELF = r"my ?self"

EN_RISK: tuple[RiskPattern, ...] = (
    # suicide
    RiskPattern("en.suicide.kill_myself", S, "en", rf"kill(?:s|ed|ing)? {_SELF}"),
    RiskPattern("en.suicide.end_life", S, "en", r"(?:end(?:s|ed|ing)?|takes?|took|taking) my (?:own )?life"),
    RiskPattern("en.suicide.end_it_all", S, "en", r"end(?:ing)? it all"),
    RiskPattern(
        "en.suicide.want_to_die", S, "en",
        r"(?:want|wants|wanted|wanting|wanna|wish|wished|wishing|ready|deserve|deserves) (?:to )?die",
    ),
    RiskPattern(
        "en.suicide.i_would_die", S, "en",
        r"i(?:'d|'ll| would| could| should| will| might| just)(?: just| rather| really| simply)* die",
    ),
    RiskPattern("en.suicide.suicidal", S, "en", r"suicid(?:e|es|al|ality)"),
    RiskPattern(
        "en.suicide.no_reason_to_live", S, "en",
        r"(?:no|not any|nothing|not much|no more) (?:reason|point|purpose) (?:to|in|for) "
        r"(?:live|living|go on|going on|keep going|being alive|life)|nothing (?:left )?to live for",
    ),
    RiskPattern("en.suicide.better_off_dead", S, "en", r"better off dead|better (?:off )?without me"),
    RiskPattern(
        "en.suicide.dont_want_to_live", S, "en",
        r"(?:don'?t|do not|didn'?t|no longer|not) (?:want|wanna|wish) to "
        r"(?:live|be alive|exist|wake up|be here any ?more|go on)",
    ),
    RiskPattern(
        "en.suicide.wish_dead", S, "en",
        r"wish(?:ed)? i (?:was|were|'d|had) (?:dead|never (?:been )?born)|wish(?:ed)? i (?:could )?disappear",
    ),
    RiskPattern(
        "en.suicide.method", S, "en",
        rf"hang(?:ing|ed)? {_SELF}|jump(?:ing|ed)? (?:off|from) (?:a|the|my) "
        r"(?:bridge|roof|building|balcony|cliff|window)"
        r"|jump(?:ing|ed)? in front of (?:a|the) (?:train|bus|car|truck)",
    ),
    RiskPattern(
        "en.suicide.pills", S, "en",
        r"(?:take|took|taking|swallow|swallowed|swallowing) "
        r"(?:all|a bunch|a whole bottle|the whole bottle|a handful)(?: of)? "
        r"(?:my |the |those |these |her |his )?(?:pills|tablets|meds|medication|medicine|sleeping pills)",
    ),
    # self-harm
    RiskPattern(
        "en.self_harm.cut", SH, "en",
        rf"cut(?:s|ting)? {_SELF}|cut(?:s|ting)? (?:on )?my (?:wrists?|arms?|legs?|thighs?|skin)"
        r"|slit(?:ting)? my (?:wrists?|throat)",
    ),
    RiskPattern(
        "en.self_harm.hurt_myself", SH, "en",
        r"(?:hurt|hurts|hurting|harm|harms|harming|harmed|injure|injures|injuring|injured|burn|burns|burning"
        r"|burned|burnt|punish|punishes|punishing|punished|hit|hits|hitting|punch|punches|punching|punched"
        rf"|scratch|scratches|scratching|scratched|starve|starving|starved) {_SELF}",
    ),
    RiskPattern(
        "en.self_harm.self_harm", SH, "en",
        r"self[- ]?(?:harm|harming|injury|injuring|injuries|mutilation|mutilating|inflicted)",
    ),
    RiskPattern("en.self_harm.overdose", SH, "en", r"overdos(?:e|es|ed|ing)"),
    RiskPattern(
        "en.self_harm.head_banging", SH, "en",
        r"(?:bang|banging|banged|hit|hitting) my head (?:against|on|into)"
    ),
    # harm to others
    RiskPattern(
        "en.harm_to_others.kill_person", HO, "en",
        rf"(?:kill|kills|killed|killing|murder|murders|murdered|murdering|strangle|strangling|stab|stabbing"
        rf"|shoot|shooting) {_OBJ}",
    ),
    RiskPattern(
        "en.harm_to_others.hurt_someone", HO, "en",
        rf"(?:hurt|hurts|hurting|harm|harming|attack|attacking|beat up|beating up|punch|punching) {_OBJ}",
    ),
    RiskPattern(
        "en.harm_to_others.want_dead", HO, "en",
        rf"(?:want|wants|wanted|wish|wished) {_OBJ} (?:was |were |to be )?dead",
    ),
    RiskPattern(
        "en.harm_to_others.weapon", HO, "en",
        r"(?:buy|bought|buying|get|got|getting|bring|brought|grab|grabbed) (?:a|my|the) "
        r"(?:gun|knife|weapon|rifle|pistol)",
    ),
    # abuse
    RiskPattern(
        "en.abuse.hits_me", AB, "en",
        rf"{_SUBJ} (?:\w+ ){{0,2}}?(?:hit|hits|hitting|beat|beats|beating|slap|slaps|slapped|slapping|punch"
        r"|punches|punched|kick|kicks|kicked|choke|chokes|choked|strangle|strangles|strangled|shove|shoves"
        r"|shoved|push|pushes|pushed|burn|burns|burned|whip|whips|whipped|hurt|hurts|rape|rapes|raped|grab"
        r"|grabs|grabbed|threw|throws) (?:me|us)",
    ),
    RiskPattern("en.abuse.beats_me", AB, "en", r"beat(?:s|ing)? me(?: up)?|beaten up"),
    RiskPattern("en.abuse.abused", AB, "en", r"abus(?:e|es|ed|ing|ive|er|ers)"),
    RiskPattern(
        "en.abuse.sexual", AB, "en",
        r"molest(?:s|ed|ing|ation|er)?|rap(?:e|es|ed|ing|ist)|sexually (?:assaulted|abused|harassed|touched)"
        r"|sexual (?:assault|abuse|harassment)|incest|groped|touched me (?:inappropriately|there|down there)",
    ),
    RiskPattern(
        "en.abuse.domestic", AB, "en",
        r"domestic (?:violence|abuse)|(?:was|were|got|get|gets|been|being) (?:beaten|beat up|slapped|punched"
        r"|kicked|choked|strangled|raped|molested|assaulted|attacked)",
    ),
    RiskPattern(
        "en.abuse.threatens", AB, "en", r"threaten(?:s|ed|ing)? to (?:kill|hurt|beat|hit|harm) (?:me|us|my)"
    ),
    RiskPattern("en.abuse.kill_me", AB, "en", r"(?:kill|kills|killing|murder|murders) me"),
)

_ZH_THEM = r"(?:他|她|他们|她们|你|你们|那个人|那个人渣|那个混蛋|所有人|全家|他全家|她全家)"

ZH_RISK: tuple[RiskPattern, ...] = (
    # suicide
    RiskPattern("zh.suicide.suicide", S, "zh", r"自杀|自尽|寻死|轻生|寻短见|殉情"),
    RiskPattern("zh.suicide.want_to_die", S, "zh", r"想(?:要|去)?死"),
    RiskPattern(
        "zh.suicide.dont_want_to_live", S, "zh",
        r"不想(?:再)?活|活不下去|活着(?:没|没有|还有什么)(?:意思|意义|劲)|不如死了|死了算了|死了就好了"
        r"|一了百了|生不如死|不想(?:再)?醒来|活够了",
    ),
    RiskPattern("zh.suicide.end_life", S, "zh", r"结束(?:掉)?(?:自己|我自己|我)?(?:的)?生命"),
    RiskPattern("zh.suicide.method", S, "zh", r"跳楼|跳河|跳江|跳海|跳桥|卧轨|上吊|烧炭|割喉"),
    RiskPattern(
        "zh.suicide.pills", S, "zh",
        r"(?:吞|吃|喝)(?:了|掉)?(?:一整瓶|一瓶|一大把|一把|好多|很多|大量|所有的?)(?:安眠药|药片|药|农药)"
        r"|喝(?:了)?农药|吞(?:了)?安眠药",
    ),
    RiskPattern("zh.suicide.farewell", S, "zh", r"遗书|遗言"),
    # self-harm
    RiskPattern(
        "zh.self_harm.cut", SH, "zh", r"割腕|割手腕|划手腕|(?:割|划|划伤|割伤|烫伤|烫|烧)(?:我)?自己"
    ),
    RiskPattern("zh.self_harm.self_harm", SH, "zh", r"自残|自伤|自虐|自我伤害"),
    RiskPattern("zh.self_harm.hurt_myself", SH, "zh", r"(?:伤害|弄伤|打|掐|咬|惩罚|折磨)(?:我)?自己"),
    RiskPattern("zh.self_harm.overdose", SH, "zh", r"吃药过量|服药过量|过量服药|药物过量|过量(?:吃|服用)"),
    RiskPattern("zh.self_harm.head_banging", SH, "zh", r"撞墙|用头撞"),
    # harm to others
    RiskPattern(
        "zh.harm_to_others.kill", HO, "zh",
        rf"(?:杀|杀了|杀掉|杀死|弄死|整死|砍死|捅死|打死|毒死|掐死){_ZH_THEM}|想杀人|要杀人|去杀人|同归于尽",
    ),
    RiskPattern(
        "zh.harm_to_others.hurt", HO, "zh",
        r"伤害(?:他|她|他们|她们|你|别人|他人|孩子|家人)|报复(?:他|她|他们|她们|社会)|(?:捅|砍)(?:他|她|他们|人)",
    ),
    # abuse
    RiskPattern(
        "zh.abuse.hits_me", AB, "zh",
        r"(?:打|揍|扇|踢|掐|推|抽|踹|打死|掐死|勒)我|对我动手|拳打脚踢|拿(?:皮带|棍子|刀|衣架|鞭子)打",
    ),
    RiskPattern("zh.abuse.domestic", AB, "zh", r"家暴|家庭暴力|暴力对待"),
    RiskPattern("zh.abuse.maltreat", AB, "zh", r"虐待|施虐|体罚"),
    RiskPattern(
        "zh.abuse.sexual", AB, "zh",
        r"性侵|强奸|强暴|猥亵|性骚扰|乱伦|摸我(?:的)?(?:身体|胸|下面|下体|私处|隐私部位)",
    ),
    RiskPattern(
        "zh.abuse.threatens", AB, "zh", r"威胁(?:说)?要?(?:杀|打|弄死|杀了)我|要杀了我|(?:会|要)杀死我"
    ),
)

EN_IDIOMS: tuple[Idiom, ...] = (
    Idiom("en.idiom.would_die_for", "en", r"(?:'d|would|could) (?:\w+ )?die for"),
    Idiom(
        "en.idiom.die_of", "en",
        r"die (?:of|from) (?:embarrassment|shame|laughter|laughing|boredom|curiosity|jealousy|envy|cuteness"
        r"|happiness)|die laughing",
    ),
    # "this traffic is killing me", "my feet are killing me": not when the subject is a person.
    Idiom(
        "en.idiom.thing_is_killing_me", "en",
        rf"(?!(?:he|she|they|{_PEOPLE})\b)\w+(?:'s|'re| is| are| was| were)"
        r"(?: (?:literally|really|just|absolutely|totally|so))? killing me",
    ),
    Idiom("en.idiom.killing_me_softly", "en", r"killing me softly"),
    Idiom(
        "en.idiom.kill_with_kindness", "en",
        r"kill (?:him|her|them|you|someone|people|everyone) with kindness"
    ),
    Idiom(
        "en.idiom.shoot_a_message", "en",
        r"shoot (?:him|her|them|you|someone) (?:a|an) (?:message|text|email|e-mail|note|line|dm)",
    ),
    Idiom(
        "en.idiom.hurt_feelings", "en",
        r"(?:hurt|hurts|hurting) (?:his|her|their|your|my|someone's|people's|anyone's|everyone's) feelings",
    ),
    Idiom("en.idiom.hit_me_up", "en", r"hit(?:s|ting)? (?:me|him|her|them|you|us) up(?! against)"),
    Idiom(
        "en.idiom.beats_me", "en",
        r"(?:^|(?<=[.!?;:,\"(])|(?<=[.!?;:,\"(] ))beats me(?! up)"
        r"|(?:it|that|this|well|honestly|frankly),? beats me(?! up)",
    ),
    Idiom(
        "en.idiom.beat_me_at", "en",
        r"beat(?:s)? me (?:to it|at (?:chess|cards|tennis|golf|poker|pool|darts|scrabble|monopoly"
        r"|(?:a|the|this|that|every|video) games?|the race|racing|running|arm wrestling))",
    ),
    Idiom(
        "en.idiom.career_suicide", "en",
        r"(?:career|social|political|commercial|financial|professional) suicide"
    ),
    Idiom(
        "en.idiom.overdose_on", "en",
        r"overdos(?:e|ed|ing) on (?:caffeine|coffee|sugar|chocolate|candy|tv|netflix|love|sunshine)",
    ),
    Idiom(
        "en.idiom.cut_myself_slack", "en",
        rf"cut(?:ting)? {_SELF} (?:some|a little|a bit of) slack"
        rf"|cut(?:ting)? {_SELF} (?:a|another) (?:slice|piece|break)",
    ),
)

ZH_IDIOMS: tuple[Idiom, ...] = (
    # 我想死你了 = "I miss you so much"
    Idiom("zh.idiom.miss_you", "zh", r"想死(?:你|您|我|你们|他|她|咱们|我们)(?:了|啦)"),
    Idiom("zh.idiom.bargain_price", "zh", r"跳楼(?:价|大甩卖|甩卖|大促|清仓)"),
    Idiom("zh.idiom.call_me", "zh", r"打我(?:的)?(?:电话|手机|座机)"),
    Idiom("zh.idiom.never_tell", "zh", r"打死(?:我)?也不"),  # 打死我也不说 = I'll never tell
    Idiom("zh.idiom.slap_own_face", "zh", r"打(?:我)?自己的?脸"),
    Idiom(
        "zh.idiom.hurt_feelings", "zh",
        r"伤害(?:了)?(?:他|她|他们|她们|你|别人|他人|孩子|家人)的?(?:感情|自尊心?|心)",
    ),
    Idiom("zh.idiom.push_me_forward", "zh", r"推(?:了)?我一把"),
)

_LABEL_KEYS = (
    r"labels?|emotions?|strateg(?:y|ies)|annotations?|categor(?:y|ies)|confidence|rationale|sentiment|intents?"
    r"|risk|scores?|标签|情绪|策略|类别"
)

INJECTION_PATTERNS: tuple[InjectionPattern, ...] = (
    InjectionPattern(
        "inj.en.ignore_previous", "en",
        r"\b(?:ignore|disregard|forget|override|bypass|skip) (?:all |any )?(?:of )?"
        r"(?:the |your |these |those |my |our )?(?:previous|prior|above|earlier|preceding|foregoing|system"
        r"|original|initial|former|old|existing|given) "
        r"(?:instructions?|prompts?|rules|directions|guidelines|context|messages?|commands?|task)\b",
    ),
    InjectionPattern(
        "inj.en.ignore_the_instructions", "en",
        r"\b(?:ignore|disregard) (?:all|the|your|these|those|any|all the|all of the|all your|all of your) "
        r"(?:instructions?|prompts?|guidelines|directions)\b",
    ),
    InjectionPattern(
        "inj.en.disregard_above", "en",
        r"\b(?:disregard|ignore|forget) (?:everything |all |anything )?(?:written |said |stated )?"
        r"(?:above|before this|prior to this)\b|\b(?:disregard|ignore) the (?:above|preceding)\b",
    ),
    InjectionPattern(
        "inj.en.you_are_now", "en",
        r"\b(?:you are|you're|you will be) now (?:a |an |the |my |in )?(?:\w+ ){0,2}?"
        r"(?:assistant|ai|model|bot|chatbot|labell?er|annotator|classifier|gpt|chatgpt|dan|llm|system|agent|jailbroken|unrestricted"
        r"|unfiltered|developer mode|admin mode|debug mode|god mode)\b"
        r"|\bfrom now on,? you (?:are|will|must|should|shall) (?:only )?(?:\w+ ){0,3}?"
        r"(?:output|return|respond|reply|answer|label|classify|act|ignore)\b"
        r"|\b(?:act|behave) as (?:a |an )?(?:\w+ )?"
        r"(?:assistant|ai|model|bot|labell?er|annotator|classifier|dan)\b"
        r"|\bpretend (?:to be|you are) (?:a |an )?(?:\w+ )?(?:assistant|ai|model|bot|labell?er|annotator"
        r"|classifier|dan)\b",
    ),
    InjectionPattern(
        "inj.en.system_prompt", "en",
        r"\b(?:system prompt|system message|system instructions?|developer (?:message|prompt|mode)"
        r"|(?:hidden|initial|original) (?:prompt|instructions)|jailbreak)\b",
    ),
    # "...and label everything Happiness": an imperative (line start, after punctuation, "and"/"then"/
    # "please"...) and a label-like value (Capitalised or quoted). "I label everything as a failure" passes.
    InjectionPattern(
        "inj.en.label_as", "en",
        r"(?:(?:^|(?<=[.!?;:,]))\s*|\b(?:and|then|please|instead|simply|now|just) )"
        r"(?:label|annotate|classify|tag|mark|categori[sz]e) "
        r"(?:everything|all|this|it|each \w+|every \w+|these|them|the (?:whole|entire) \w+|this \w+"
        r"|all (?:of )?(?:the |these |my )?\w+)"
        r"(?: as| with| to be| =|:)? (?:[\"'“][^\"'”\n]{1,40}[\"'”]|(?-i:[A-Z])[\w-]*)",
    ),
    InjectionPattern(
        "inj.en.correct_label", "en",
        r"\b(?:correct|right|true|real|actual|final|only valid) (?:label|labels|annotation|classification"
        r"|output|emotion label|strategy label) (?:is|are|should be|must be|=|:)",
    ),
    InjectionPattern(
        "inj.en.output_json", "en",
        r"\b(?:output|return|respond with|reply with|print|produce|emit|answer with|write|generate|give me) "
        r"(?:only |exactly |just )?(?:the |this |a |an )?(?:following |this )?(?:valid )?json\b"
        r"|\b(?:output|return|respond with|reply with|print|emit) (?:exactly |only )?(?:the )?following "
        r"(?:output|labels?|answer|result|object|text)\b",
    ),
    InjectionPattern(
        "inj.any.json_payload", "any",
        rf"\{{[^{{}}]{{0,500}}?[\"'“](?:{_LABEL_KEYS})[\"'”]\s*[:：][^{{}}]{{0,500}}\}}?",
    ),
    InjectionPattern(
        "inj.any.role_tag", "any",
        r"<\|?(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|start_header_id|end_header_id"
        r"|eot_id)\|?>|\[/?INST\]|<</?SYS>>"
        r"|^[^\S\n]*#{2,}[^\S\n]*(?:instructions?|system|response|input|output)\b"
        r"|^[^\S\n]*(?:assistant|system)[^\S\n]*[:：]",
    ),
    InjectionPattern(
        "inj.zh.ignore_previous", "zh",
        r"(?:忽略|无视|忘记|忘掉|不要理会|别管)(?:掉)?(?:你)?(?:之前|上面|以上|前面|先前|原来|所有|全部|一切)"
        r"(?:的|所有的)?(?:指令|说明|指示|提示词?|规则|要求|任务|设定)",
    ),
    InjectionPattern(
        "inj.zh.you_are_now", "zh",
        r"你现在是(?:一个|一名|个)?\w{0,6}?(?:助手|模型|机器人|AI|标注员|标注器|分类器|系统|GPT|DAN|开发者模式)"
        r"|从现在(?:开始|起)[，,]?你(?:是|要|必须|只能|将)|你的新(?:身份|角色|任务)是"
        r"|扮演(?:一个)?(?:助手|模型|标注员|AI|系统)",
    ),
    InjectionPattern(
        "inj.zh.label_as", "zh",
        r"(?:把|将)(?:所有|全部|这|每)\w{0,8}?(?:都)?(?:标注|标记|标)(?:为|成)",
    ),
    InjectionPattern("inj.zh.system_prompt", "zh", r"系统提示词?|系统指令|提示词|越狱|开发者模式"),
    InjectionPattern(
        "inj.zh.output_json", "zh",
        r"(?:输出|返回|回复|给出)(?:以下|下面|如下)?的?\s*JSON|(?:输出|返回)(?:以下|如下)(?:内容|结果|标签)",
    ),
    InjectionPattern("inj.zh.correct_label", "zh", r"(?:正确|真正|最终)的?(?:标签|标注)(?:是|为|应该是)"),
)
