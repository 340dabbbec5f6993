"""Word lists of the rules tier (English and Chinese): guards, kinds of slot, attribute names."""

from __future__ import annotations

import re

# ---- guards -------------------------------------------------------------------------------------
QUESTION_START_EN = frozenset(
    "what what's whats where where's who who's whom whose when when's why how how's which do does did can "
    "could would will shall should is are am was were have has may might isn't aren't doesn't didn't "
    "wouldn't couldn't".split())
QUESTION_CUES_EN = re.compile(
    r"\b(?:do you (?:remember|know|recall)|am i right|did i (?:tell|say|mention)|remind me|tell me (?:my|what|where|"
    r"who|again)|what(?:'s| is| was) my|again\?)", re.I)
QUESTION_ZH = re.compile(r"什么|啥|多少|哪|谁|(?<![前这好十过那])几[号点岁个次时天月年]|怎么|为什么|如何|是否|是不是|有没有|能不能|可不可以|"
                         r"对不对|来着|[吗呢嘛][\s。！!]*$")
HYPOTHETICAL_EN = re.compile(
    r"\b(?:if|suppose|supposing|imagine|imagining|what if|let's say|lets say|pretend|hypothetically|in case|"
    r"assuming|assume|wish|unless|for example|for instance|e\.g\.)\b", re.I)
HYPOTHETICAL_ZH = re.compile(r"假如|如果|假设|要是|万一|假若|倘若|的话|想象|设想|比如|例如|譬如|假使")
REPORT_EN = re.compile(
    r"\b(?P<subj>\w+)\s+(?:says|said|say|shouts|shouted|tells|told|writes|wrote|asks|asked|claims|claimed|"
    r"yells|yelled|whispers|whispered|thinks|thought|believes|believed|"
    r"insists|insisted|texted|emailed)\b", re.I)
REPORT_ZH = re.compile(r"(?P<subj>[^\s，,。我]{0,1})(?:说|讲|喊|道|问|写道|声称|表示|告诉我|认为|觉得)(?![错过话明])")
QUOTES = re.compile(r"\"[^\"]*\"|“[^”]*”|「[^」]*」|『[^』]*』|‘[^’]*’|(?<!\w)'[^']{3,}'(?!\w)")
CORRECTION_EN = re.compile(
    r"\b(?:correction|correct that|sorry|i mean|i meant|that's wrong|that was wrong|that's not right|"
    r"that isn't right|typo|my mistake|my bad|wait|actually|scratch that|rather)\b", re.I)
CORRECTION_ZH = re.compile(r"更正|纠正|说错了|搞错了|写错了|打错了|记错了|不对|其实|应该是|改成|改为|更新为|换成|修改为")

# ---- people (third parties) ---------------------------------------------------------------------
PERSON_EN = ("sister|brother|mother|mom|mum|father|dad|wife|husband|partner|boyfriend|girlfriend|son|daughter|"
             "friend|boss|colleague|coworker|co-worker|manager|neighbou?r|roommate|flatmate|kid|kids|child|children|"
             "cousin|aunt|uncle|grandma|grandpa|grandmother|grandfather|grandparents|teacher|client|customer|"
             "parents|family|fianc[eé]e?|spouse|baby|niece|nephew|dog|cat|pet|team|landlord|doctor|assistant|"
             "classmate|student|employee|in-laws?|mother-in-law|father-in-law|ex")
THIRD_EN = re.compile(rf"\b(?:my|our|his|her|their|your)\s+(?:\w+\s+)?(?:{PERSON_EN})(?:'s)?\b|"
                      r"^(?:he|she|they|he's|she's|they're|his|her|their)\b", re.I)
PERSON_ZH = ("妈妈|妈|母亲|爸爸|爸|父亲|父母|哥哥|姐姐|弟弟|妹妹|哥|姐|弟|妹|老婆|老公|妻子|丈夫|爱人|儿子|女儿|孩子|"
             "朋友|同事|老板|领导|经理|上司|同学|室友|邻居|男朋友|女朋友|男友|女友|对象|爷爷|奶奶|外公|外婆|姥姥|姥爷|"
             "老师|客户|家人|亲戚|表哥|表姐|表妹|表弟|堂哥|堂姐|叔叔|阿姨|舅舅|姑姑|宝宝|狗|猫|闺蜜|兄弟|老乡|助理")
THIRD_ZH = re.compile(rf"(?:{PERSON_ZH})|^(?:他|她|它|他们|她们|你|您|人家|别人|大家|对方)")

# ---- values -------------------------------------------------------------------------------------
NOT_NAMES = frozenset(
    """ok okay fine good great sorry here back home done ready sure happy glad not so very just also still
    married single american british english chinese french german spanish japanese korean italian indian
    canadian australian irish vegan vegetarian pescatarian christian muslim jewish catholic buddhist hindu
    atheist new from in at on the a an tired busy hungry sick ill alright interested excited afraid
    available allergic lactose celiac diabetic free retired pregnant late early""".split())
NOT_NAMES_ZH = frozenset("老客户 客户 会员 新用户 用户 新人 学生 老师 本人 自己 一个 这个 那个 您 你 他 她 什么 谁".split())
SURNAMES = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔"
    "钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤常温康施文牛樊葛"
    "邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝"
    "路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂"
    "全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩明佘池查麻苑迟邝")
COMPOUND_SURNAMES = ("欧阳", "司马", "诸葛", "上官", "东方", "慕容", "令狐", "皇甫", "尉迟", "公孙", "长孙", "夏侯")
NAME_BAD_END_ZH = frozenset("人的了者员师生家们族迷控粉户友客长工手哥姐弟妹啊呀哦吧呢吗")
DIET_EN = ("vegetarian|vegan|pescatarian|pescetarian|gluten-free|gluten free|lactose intolerant|lactose-intolerant|"
           "celiac|coeliac|dairy-free|dairy free|halal|kosher|keto|paleo|teetotal|teetotaller|nut-free")
JOB_HEADS = frozenset(
    """engineer developer programmer designer manager teacher nurse doctor lawyer attorney accountant analyst
    scientist consultant architect chef cook writer editor journalist researcher professor lecturer student
    pharmacist dentist surgeon physician therapist pilot driver mechanic electrician plumber carpenter
    farmer baker barista waiter waitress cashier clerk officer director founder ceo cto cfo intern
    entrepreneur freelancer photographer artist musician actor actress translator interpreter librarian
    salesperson recruiter administrator technician veterinarian vet paramedic firefighter soldier
    police policeman policewoman secretary tutor coach trainer economist banker broker auditor
    specialist coordinator assistant representative agent owner investor student tester marketer""".split())
JOB_SUFFIXES = ("ist", "ician", "ologist", "grapher", "engineer", "developer", "manager", "designer", "analyst",
                "officer", "director", "scientist", "technician")
ORG_ZH = re.compile(r"公司|银行|医院|学校|大学|中学|小学|集团|工厂|厂|店|局|所|院|中心|科技|企业|单位|机构|"
                    r"一家|部门|事务所|研究院|政府|餐厅|酒店|超市")

# ---- ids -------------------------------------------------------------------------------------------
ID_NOUNS_EN = {
    "order": "order_number", "ticket": "ticket_number", "case": "ticket_number", "account": "account_number",
    "membership": "account_number", "member": "account_number", "customer": "account_number",
    "tracking": "tracking_number", "booking": "booking_number", "reservation": "booking_number",
    "confirmation": "booking_number", "invoice": "invoice_number", "policy": "policy_number",
}
ID_NOUNS_ZH = {
    "订单号": "order_number", "订单编号": "order_number", "订单": "order_number", "工单号": "ticket_number",
    "工单": "ticket_number", "快递单号": "tracking_number", "运单号": "tracking_number", "物流单号": "tracking_number",
    "单号": "order_number", "账号": "account_number", "账户": "account_number", "会员号": "account_number",
    "会员卡号": "account_number", "预订号": "booking_number", "预约号": "booking_number", "发票号": "invoice_number",
}
MULTI_KEYS = frozenset({"order_number", "ticket_number", "account_number", "tracking_number", "booking_number",
                        "invoice_number", "policy_number", "address", "allergy", "diet"})

# ---- instructions and preferences ---------------------------------------------------------------
LANG_EN = ("english|chinese|mandarin|cantonese|french|spanish|german|japanese|korean|italian|portuguese|russian|"
           "arabic|hindi|dutch|swedish|turkish|vietnamese|thai|polish|greek|hebrew|indonesian|simplified chinese|"
           "traditional chinese")
LANG_ZH = "简体中文|繁体中文|中文|汉语|普通话|粤语|英文|英语|日语|日文|韩语|韩文|法语|法文|德语|德文|西班牙语|俄语|意大利语|葡萄牙语"
TONE_EN = ("formal|informal|casual|professional|friendly|polite|warm|neutral|playful|serious|relaxed|humorous|"
           "funny|empathetic|respectful|businesslike|conversational|enthusiastic|gentle|direct|blunt")
TONE_ZH = "正式|专业|礼貌|轻松|随意|友好|幽默|客气|严肃|亲切|温和|活泼|口语化|书面"
FORMAT_EN = ("bullet points|bullet-points|bullets|bullet list|numbered list|numbered lists|a list|lists|tables?|"
             "markdown|json|plain text|headings|headers|code blocks|paragraphs|prose|step-by-step|steps")
FORMAT_ZH = "列表|分点|要点|表格|编号|Markdown|markdown|JSON|json|纯文本|段落|步骤"
LENGTH_EN = re.compile(r"\b(?:short|shorter|brief|briefer|concise|succinct|terse|detailed|longer|in depth|"
                       r"\d+\s+(?:words|sentences|lines|paragraphs|characters)|one (?:sentence|paragraph|line)|"
                       r"two (?:sentences|paragraphs|lines)|three (?:sentences|paragraphs|lines))\b", re.I)
LENGTH_ZH = re.compile(r"简短|简洁|简单点|简单一点|精简|短一点|短一些|长一点|详细|\d+\s*字|[一二三四五六七八九十百千]+字|"
                       r"一句话|两句话|三句话")
STYLE_EN = {"abbreviation": "abbreviations", "acronym": "abbreviations", "emoji": "emojis", "emoticon": "emojis",
            "jargon": "jargon", "slang": "slang", "exclamation": "exclamation_marks", "markdown": "markdown",
            "technical term": "jargon", "bullet": "bullet_points", "table": "tables"}
STYLE_ZH = {"缩写": "abbreviations", "简写": "abbreviations", "表情": "emojis", "emoji": "emojis",
            "术语": "jargon", "黑话": "slang", "感叹号": "exclamation_marks"}

# ---- attribute names for forget requests --------------------------------------------------------
ATTR_KEYS: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    (re.compile(r"\b(?:full )?name\b|名字|姓名|称呼"), ("fact:name",)),
    (re.compile(r"e-?mail|邮箱|电子邮件"), ("fact:email",)),
    (re.compile(r"phone|mobile|cell|telephone|电话|手机|联系方式"), ("fact:phone",)),
    (re.compile(r"shipping address|home address|\baddress|地址"), ("fact:address",)),
    (re.compile(r"location|city|where i live|hometown|住址|住哪|住在|城市"), ("fact:location", "fact:work_city")),
    (re.compile(r"allerg|过敏"), ("fact:allergy",)),
    (re.compile(r"birthday|birth date|date of birth|生日"), ("fact:birthday",)),
    (re.compile(r"\bjob\b|occupation|\bprofession\b|职业|工作"), ("fact:occupation", "fact:employer")),
    (re.compile(r"employer|company|公司|单位"), ("fact:employer",)),
    (re.compile(r"order|订单"), ("fact:order_number",)),
    (re.compile(r"ticket|工单"), ("fact:ticket_number",)),
    (re.compile(r"account|账号|账户"), ("fact:account_number",)),
    (re.compile(r"\bdiet|饮食|忌口"), ("fact:diet",)),
    (re.compile(r"task|project|任务|项目"), ("task:current",)),
    (re.compile(r"\btone\b|语气|口吻"), ("instruction:tone",)),
    (re.compile(r"language|语言"), ("instruction:language",)),
    (re.compile(r"everything|all of it|all my data|所有|全部|一切"), ("*",)),
]


def attr_keys(text: str) -> tuple[str, ...]:
    """Slot key families an attribute phrase names ("my email address" -> ("fact:email",))."""
    low = text.lower()
    for pat, keys in ATTR_KEYS:
        if pat.search(low):
            return keys
    return ()
